"""The pull-request comment of the example workflow: posted once, updated (never duplicated) on a re-run, and a
pull request number that is not a number refused. `gh` is replaced by a fake that keeps the comments in a file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".github" / "scripts" / "gate-comment.sh"

FAKE_GH = r'''#!/usr/bin/env python3
import json, sys
from pathlib import Path
store = Path(sys.argv[0]).with_name("comments.json")
comments = json.loads(store.read_text()) if store.exists() else []
args = sys.argv[1:]
assert args[0] == "api", args
method = args[args.index("--method") + 1] if "--method" in args else "GET"
path = args[1] if args[1] != "--method" else args[3]
if path.endswith("/artifacts"):
    print("77")  # the dashboard artifact's id, as --jq would print it
elif method == "GET":
    marker = "<!-- optcv speed gate -->"
    for c in comments:
        if c["body"].startswith(marker):
            print(c["id"])
else:
    body = Path(next(a for a in args if a.startswith("body=@"))[6:]).read_text()
    if method == "POST":
        comments.append({"id": 100 + len(comments), "body": body})
    else:
        next(c for c in comments if str(c["id"]) == path.rsplit("/", 1)[1])["body"] = body
    store.write_text(json.dumps(comments))
'''


def _post(tmp_path: Path, pr: str, summary: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "artifact"
    folder.mkdir(exist_ok=True)
    (folder / "pr-number").write_text(pr + "\n")
    (folder / "gate.md").write_text(summary)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "GH_TOKEN": "x",
           "REPO": "team/app", "RUN_ID": "555"}
    return subprocess.run(["bash", str(SCRIPT), str(folder)], capture_output=True, text=True, env=env)


def test_the_comment_is_posted_once_and_updated_on_a_rerun(tmp_path):
    (tmp_path / "bin").mkdir()
    gh = tmp_path / "bin" / "gh"
    gh.write_text(FAKE_GH)
    gh.chmod(0o755)
    first = _post(tmp_path, "12", "## optcv gate: 1 of 18 cases slower\n")
    assert first.returncode == 0 and "posted" in first.stdout, first.stderr
    second = _post(tmp_path, "12", "## optcv gate: passed (18 cases)\n")
    assert second.returncode == 0 and "updated comment 100" in second.stdout, second.stderr
    comments = json.loads((tmp_path / "bin" / "comments.json").read_text())
    assert len(comments) == 1
    assert "passed (18 cases)" in comments[0]["body"] and "slower" not in comments[0]["body"]
    assert "https://github.com/team/app/actions/runs/555/artifacts/77" in comments[0]["body"]
    refused = _post(tmp_path, "12; rm -rf /", "x")
    assert refused.returncode == 1 and "not a pull request number" in refused.stderr
