"""The README and the documentation site say what optcv does: their Python examples run as they stand, every
`optcv` command in them parses, every `pytest` option in them exists, every declaration in them is valid, every
CLI option has help text (the CLI reference is generated from it), and every JSON format optcv writes is listed."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from optcv.cli import build_parser
from optcv.declared.schema import json_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
TEXTS = [ROOT / "README.md", *PAGES]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def shell_commands(block: str) -> list[list[str]]:
    """Each simple command of a bash block, as words: continuations joined, comments and env assignments left out."""
    text = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|"):
                found.append(command)
                command = []
            elif command or not re.fullmatch(r"[A-Z_]+=.*", word):
                command.append(word)
    return [c for c in found if c]


def test_the_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)\)", text)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not missing


def test_every_optcv_command_in_the_docs_parses():
    checked = 0
    for path in TEXTS:
        for block in blocks(path, "bash"):
            for words in shell_commands(block):
                if words[0] != "optcv":
                    continue
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit as exc:
                    pytest.fail(f"{path.relative_to(ROOT)}: `{shlex.join(words)}` does not parse (exit {exc.code})")
                checked += 1
    assert checked >= 40


def test_every_pytest_option_in_the_docs_exists():
    helped = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    options = {(path, word.split("=")[0]) for path in TEXTS for block in blocks(path, "bash")
               for words in shell_commands(block) if words[0] in ("pytest", "python") and "pytest" in words[:3]
               for word in words if word.startswith("--")}
    assert len(options) > 10
    unknown = sorted(f"{path.relative_to(ROOT)}: {option}" for path, option in options
                     if not re.search(rf"(^|[\s,]){re.escape(option)}\b", helped, flags=re.M))
    assert not unknown


def test_every_declaration_in_the_docs_follows_the_schema():
    declarations = [(path, tomllib.loads(block)) for path in TEXTS for block in blocks(path, "toml")]
    tables = [(path, text.get("tool", {}).get("optcv", {"models": text.get("models")})) for path, text in declarations]
    tables = [(path, table) for path, table in tables if table.get("models")]
    assert len(tables) >= 3
    for path, table in tables:
        errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(table))
        assert not errors, f"{path.relative_to(ROOT)}: {errors[0].message}"
    with pytest.raises(jsonschema.ValidationError):  # the schema refuses what the reader refuses
        jsonschema.validate({"models": {"m": {"factory": "a:b", "input": {"shape": [3]}, "batch": [1]}}}, json_schema())


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "optcv"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"`{prefix} {name}` has no help text: give add_parser(..., help=...)"
                yield from _subparsers(sub, f"{prefix} {name}")


def undocumented_options(parser: argparse.ArgumentParser) -> list[str]:
    return [f"{prog} {'/'.join(action.option_strings) or action.dest}" for prog, sub in _subparsers(parser)
            for action in sub._actions
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction)
            and not (action.help or "").strip()]


def test_every_command_and_option_of_the_cli_reference_has_help_text():
    assert undocumented_options(build_parser()) == []


def test_the_help_check_catches_an_option_added_without_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["gate"].add_argument("--new-option")
    assert undocumented_options(parser) == ["optcv gate --new-option"]


def test_every_json_format_optcv_writes_is_listed():
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "optcv").rglob("*.py"))
    formats = set(re.findall(r'"(optcv-[a-z-]+/\d+)"', source))
    listed = (DOCS / "reference" / "json-formats.md").read_text(encoding="utf-8")
    assert len(formats) > 10
    assert sorted(f for f in formats if f"`{f}`" not in listed) == []


# The library's examples: each in a fresh interpreter, in a folder laid out as `optcv run --preset quick` leaves it
# (a small synthetic model and data set stand in for the real ones).

def library_examples() -> list[str]:
    return blocks(DOCS / "reference" / "library.md", "python")


def run_example(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory, tiny_tutorial) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    models = folder / "runs" / "quick" / "models"
    models.mkdir(parents=True)
    shutil.copyfile(tiny_tutorial.checkpoint, models / "tutorial.pt")
    shutil.copyfile(tiny_tutorial.onnx, models / "tutorial.onnx")
    return folder


def test_the_library_page_has_three_examples():
    assert len(library_examples()) == 3


def test_time_two_backends(quick_folder, tiny_data_dir):
    done = run_example(library_examples()[0], quick_folder, {"OPTCV_DATA_DIR": str(tiny_data_dir)})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^onnxruntime: \d+\.\d\dx pytorch per image \(95 % CI", done.stdout, flags=re.M), done.stdout


def test_check_parity(quick_folder, tiny_data_dir):
    done = run_example(library_examples()[1], quick_folder, {"OPTCV_DATA_DIR": str(tiny_data_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "parity passed (0 of 40 differ)"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=optcv", "-c", "user.email=optcv@localhost", "-C", str(repo), *args],
                   check=True, capture_output=True)


def test_gate_two_revisions(tmp_path):
    """In a repository whose last commit changed only its README, the gate says there is nothing to time."""
    repo = tmp_path / "repo"
    for folder in ("optcv", "benchmarks", "tests"):  # the gate's cases are the suite's tests
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "baselines"))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / "README.md").write_text("first\n")
    _git(repo, "init", "--quiet")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "first")
    (repo / "README.md").write_text("second\n")
    _git(repo, "commit", "--quiet", "-am", "README only")
    done = run_example(library_examples()[2], repo, {"PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert "nothing to time (base and head hold the same optcv code that the cases run)" in done.stdout


def test_the_schema_example_runs():
    (example,) = blocks(DOCS / "reference" / "config.md", "python")
    done = run_example(example, ROOT, {})
    assert done.returncode == 0 and done.stdout.startswith("{\n  \"$schema\""), done.stderr


# The built site, as a reader's browser opens it: offline, every internal link resolving, its search working.

@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                           str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_every_internal_link_of_the_site_resolves_and_nothing_is_fetched(built_site):
    pages = sorted(built_site.rglob("*.html"))
    assert len(pages) > 25
    broken, fetched = [], []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        fetched += [f"{page.name}: {u}" for u in re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"',
                                                            text)]
        for target in re.findall(r'href="([^"#?:]+)(?:#[^"]*)?"', text):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(built_site)} → {target}")
    assert broken == [] and fetched == []


def _browser_dom(url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    from tests.test_history import CHROMIUM_FLAGS, _chromium

    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def served_site(built_site):
    """The site from a web server on loopback, as a reader serves it (its search reads pages with fetch(), which a
    browser refuses to file:// pages): nothing beyond this machine is reached."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_site))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_the_site_opens_in_a_browser_without_errors_and_its_search_finds_threshold(served_site, tmp_path):
    opened = _browser_dom(f"{served_site}/index.html", tmp_path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert [line for line in opened.stderr.splitlines() if "CONSOLE" in line] == []
    assert "Gate your own model" in opened.stdout
    searched = _browser_dom(f"{served_site}/search.html?q=threshold", tmp_path)
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert [line for line in searched.stderr.splitlines() if "CONSOLE" in line] == []
    hits = re.findall(r'<li[^>]*>\s*<a href="([^"]+)"', searched.stdout.split('id="search-results"', 1)[-1])
    assert len(hits) >= 3, searched.stdout[-3000:]
    assert any("gate" in hit for hit in hits), hits


def _render_module():
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks" / "proofs"))  # the renderer imports its sibling proof scripts
    spec = importlib.util.spec_from_file_location("render", ROOT / "benchmarks" / "proofs" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_proof_page_is_what_its_record_renders(capsys):
    render = _render_module()
    assert render.main(["--check"]) == 0, capsys.readouterr().err
    assert len(render.record_folders()) >= 10


def test_the_render_check_fails_on_a_page_edited_by_hand(tmp_path, monkeypatch, capsys):
    render = _render_module()
    monkeypatch.setattr(render, "PAGES", tmp_path)
    assert render.main([]) == 0 and render.main(["--check"]) == 0
    page = next(p for p in sorted(tmp_path.glob("*.md")) if p.name != "index.md")
    page.write_text(page.read_text().replace("|", "¦", 1))  # one character of a table, typed over
    assert render.main(["--check"]) == 1
    assert page.name in capsys.readouterr().err


def test_every_full_workflow_in_the_docs_follows_githubs_schema(tmp_path):
    workflows = [block for path in TEXTS for block in blocks(path, "yaml") if "\njobs:" in block]
    assert len(workflows) >= 4
    for index, block in enumerate(workflows):
        (tmp_path / f"w{index}.yml").write_text(block)
    checked = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                              *map(str, sorted(tmp_path.glob("w*.yml")))], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
