"""The tutorial "Gate your own model" (docs/tutorials/your-model.md), run as written: every file it shows is written
where it says, every shell line runs in order in one shell from an empty folder with optcv's clone beside it, and a
line that says `# exit N` must end with N. So a newcomer's first ten minutes cannot break without this failing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorials" / "your-model.md"
# A block is a file when the paragraph before it starts with its path in backticks ("`mynets/vision.py`, ...").
FILE_BEFORE = re.compile(r"(?:^|\n\n)`([\w./-]+)`(?:(?!\n\n)[^`])*\n*$")


def tutorial_script(text: str) -> str:
    """The tutorial up to its reference section as one bash script: files written with heredocs, shell lines run
    as they stand, `# exit N` checked."""
    steps = text.split("\n## What a declaration can say\n")[0]
    lines = ["set -u"]
    for found in re.finditer(r"^```(\w+)\n(.*?)^```", steps, flags=re.S | re.M):
        language, body = found.group(1), found.group(2)
        path = FILE_BEFORE.search(steps[:found.start()])
        if language == "bash":
            for line in body.splitlines():
                expected = re.search(r"#\s*exit (\d+)", line)
                command = line.split(" #")[0].strip() if expected else line
                lines.append(f"{command}; test $? -eq {expected.group(1)} || exit 99" if expected else
                             f"{line} || exit 98")
        elif path:
            lines += [f"mkdir -p \"$(dirname {path.group(1)})\"", f"cat > {path.group(1)} <<'OPTCV_EOF'",
                      body.rstrip("\n"), "OPTCV_EOF"]
    return "\n".join(lines) + "\n"


def test_the_script_holds_every_step():
    script = tutorial_script(TUTORIAL.read_text(encoding="utf-8"))
    assert "cat > mynets/vision.py" in script and "cat > pyproject.toml" in script
    assert "cat > .github/workflows/speed.yml" in script and script.count("cat > mynets/vision.py") == 2
    assert re.search(r"optcv gate --models resnet18 --against HEAD~1; test \$\? -eq 1", script)


@pytest.mark.full
@pytest.mark.timeout(3600)
def test_the_tutorial_runs_as_written(tmp_path):
    (tmp_path / "optcv").symlink_to(ROOT)
    script = tutorial_script(TUTORIAL.read_text(encoding="utf-8"))
    (tmp_path / "tutorial.sh").write_text(script)
    env_lines = "export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t\n"
    done = subprocess.run(["bash", "-c", env_lines + script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=3500)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "SPEED REGRESSION: resnet18/" in done.stderr + done.stdout
    workflow = tmp_path / "myapp" / ".github" / "workflows" / "speed.yml"
    checked = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
