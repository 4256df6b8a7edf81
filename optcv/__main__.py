import sys

from optcv.cli import main

sys.exit(main())
