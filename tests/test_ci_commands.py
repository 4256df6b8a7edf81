"""CI runs what the README says: .ci/readme_commands.py takes the README's two commands as written, and runs
command 2's lines in order, each whatever the one before it did, with the worse exit code as CI's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
assert spec is not None and spec.loader is not None
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)


def test_the_readme_installs_with_its_extras_and_tests_unit_then_benchmarks():
    steps = readme_commands.commands((ROOT / "README.md").read_text())
    assert steps["install"] == ["python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev,openvino]'"]
    tests, benchmarks = (line for line in steps["test"] if not line.startswith("export "))
    assert re.fullmatch(r"python -m pytest tests -n 2\b.*", tests) and re.fullmatch(r"python -m pytest benchmarks\b.*",
                                                                                   benchmarks)


def test_ci_and_tox_take_the_commands_from_the_readme_not_a_copy():
    run = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py install" in run and "readme_commands.py --run test" in run
    assert not re.search(r"pytest (tests|benchmarks)", re.sub(r"#.*", "", run))  # no test command of its own
    tox = (ROOT / "tox.ini").read_text()
    assert "commands = python .ci/readme_commands.py --run test" in tox.split("[testenv:pr]", 1)[1].split("[", 1)[0]


def test_every_line_runs_whatever_the_one_before_it_did_and_the_worst_code_wins(tmp_path, capsys):
    lines = ["export MARK=" + str(tmp_path), "touch $MARK/first; exit 3", "touch $MARK/second", "exit 1"]
    assert readme_commands.run(lines) == 3
    assert (tmp_path / "first").is_file() and (tmp_path / "second").is_file()
    assert readme_commands.run(["true"]) == 0


def test_a_readme_without_its_two_commands_is_a_clear_error():
    with pytest.raises(SystemExit, match="no '## Two commands' section"):
        readme_commands.commands("# optcv\n")
    with pytest.raises(SystemExit, match="no lines for: test"):
        readme_commands.commands("\n## Two commands\n\n```bash\n# 1. install\npip install .\n# 2. test\n```\n")
