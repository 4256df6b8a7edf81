from optcv.cli import run_cli

run_cli()
