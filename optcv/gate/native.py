"""Small C libraries the gate's measures load into a worker, compiled once per source into the cache."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from optcv._io import default_cache_dir


def missing_compiler() -> list[str]:
    return [] if shutil.which("cc") else ["a C compiler (cc)"]


def compiled_library(source: str, stem: str, cache_dir: Path | None = None) -> Path:
    """`source` compiled into a shared library in the cache (one file per source text, written atomically)."""
    folder = (cache_dir or default_cache_dir()) / "native"
    library = folder / f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}.so"
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        code = folder / f"{stem}.c"
        code.write_text(source, encoding="ascii")
        partial = library.with_suffix(".so.partial")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(code)], check=True,
                       capture_output=True)
        partial.replace(library)
    return library
