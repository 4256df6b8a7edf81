"""The README's two commands as written, for CI to run: `install` (command 1) and `test` (command 2).

    python3 .ci/readme_commands.py install|test          print the command's lines
    python3 .ci/readme_commands.py --run install|test    run them in order, each in a shell of its own that carries
                                                         the `export`s before it; every line runs whatever the one
                                                         before it did; exit with the worst code

So what CI runs cannot drift from what a user types: .ci/run and `tox -e pr` call this (standard library only).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
STEPS = {"1": "install", "2": "test"}


def commands(text: str) -> dict[str, list[str]]:
    """Per step, its command lines: the first ```bash block after "## Two commands", split at its "# 1." and
    "# 2." comments; other comment lines and blank lines are left out."""
    if "\n## Two commands\n" not in text:
        raise SystemExit("README.md has no '## Two commands' section")
    block = re.search(r"```bash\n(.*?)```", text.split("\n## Two commands\n", 1)[1], re.S)
    if block is None:
        raise SystemExit("README.md's '## Two commands' section has no ```bash block")
    steps: dict[str, list[str]] = {}
    current = None
    for line in block.group(1).splitlines():
        heading = re.match(r"#\s*(\d)\.", line)
        if heading and heading.group(1) in STEPS:
            current = STEPS[heading.group(1)]
            steps[current] = []
        elif current and line.strip() and not line.lstrip().startswith("#"):
            steps[current].append(line.strip())
    missing = [step for step in STEPS.values() if not steps.get(step)]
    if missing:
        raise SystemExit(f"README.md's two commands have no lines for: {', '.join(missing)}")
    return steps


def run(lines: list[str]) -> int:
    """Each line in bash, in order, with the exports of the lines before it; the worst exit code."""
    env, worst = dict(os.environ), 0
    for line in lines:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = os.path.expandvars(value.strip("'\""))
            continue
        print(f"\n$ {line}", flush=True)
        started = time.monotonic()
        code = subprocess.run(["bash", "-c", line], env=env).returncode
        print(f"[{line}: exit {code}, {time.monotonic() - started:.0f} s]", flush=True)
        worst = max(worst, code)
    return worst


def main(argv: list[str]) -> int:
    execute = argv[:1] == ["--run"]
    step = argv[1:] if execute else argv
    if step not in (["install"], ["test"]):
        raise SystemExit(__doc__)
    lines = commands(README.read_text(encoding="utf-8"))[step[0]]
    if execute:
        return run(lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
