"""The history: its database (SQLite and PostgreSQL, migrations, concurrent writers), what it reads, the steps it
finds at their boundary, the CLI, and the dashboard in a real browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import skip_or_fail
from optcv.history.ingest import HistoryInputError, record_of, record_of_file
from optcv.history.records import CHANGE_PCT, GATE, LATENCY_US, THROUGHPUT, Measurement, RunRecord
from optcv.history.steps import find_steps
from optcv.history.store import HistoryError, HistoryStore, migrate, schema_version
from optcv.history.trends import found_steps, trends
from optcv.stats import median_ci_order_statistics
from tests.history_data import AMD, INTEL, START, fill_history, noisy_levels

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "data" / "pytest_benchmark_run.json"  # a real pytest-benchmark file, as input


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optcv", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_median_interval_is_the_binomial_order_statistics():
    # n = 100: ranks ⌊50 − 9.8⌋ = 40 and ⌈1 + 50 + 9.8⌉ = 61 (1-based).
    assert median_ci_order_statistics(np.arange(1, 101)) == (40.0, 61.0)
    assert median_ci_order_statistics([7.0]) == (7.0, 7.0)


# Steps at their boundary: 40 runs, 2 % noise between runs, each run's own interval ±3.9 %.
def _series(step_at: int | None, step_pct: float, seed: int, noise: float = 2.0):
    values = noisy_levels(40, step_at, step_pct, noise, seed)
    half = 100 * 0.02 * 1.96
    return values, values - half, values + half


def test_a_step_well_above_the_noise_is_found_where_it_is():
    found = [find_steps(*_series(20, 10.0, seed)) for seed in range(50)]
    placed = sum(any(abs(s.index - 20) <= 1 for s in steps) for steps in found)
    assert placed >= 48, f"a 10 % step found at its place in {placed}/50 series"
    assert all(len(steps) <= 1 for steps in found)
    step = next(s for steps in found for s in steps)
    assert step.up and 8 < step.change_pct < 12


def test_a_step_inside_the_intervals_and_no_step_are_not_claimed():
    below = sum(len(find_steps(*_series(20, 3.0, seed))) for seed in range(50))
    unchanged = sum(len(find_steps(*_series(None, 0.0, seed))) for seed in range(100))
    assert below == 0, f"a 3 % step, inside the runs' ±3.9 % intervals, claimed {below} times"
    assert unchanged == 0, f"{unchanged} false steps in 100 unchanged series"


def test_two_steps_are_both_found_and_a_short_tail_is_not_a_step_yet():
    values = np.concatenate([np.full(12, 100.0), np.full(12, 130.0), np.full(12, 90.0)])
    values = values * (1 + np.random.default_rng(0).normal(0, 0.01, 36))
    assert [s.index for s in find_steps(values)] == [12, 24]
    assert [s.up for s in find_steps(values)] == [True, False]
    assert find_steps(np.concatenate([np.full(20, 100.0), [150.0, 150.0]])) == []  # two runs are not a trend


def test_store_keeps_every_number_and_finds_the_step_per_machine(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        made = fill_history(store)
        cases = trends(store)
        assert {(t.case, t.metric) for t in cases} == {("net/pytorch/b1", LATENCY_US),
                                                        ("net/onnxruntime/b1", LATENCY_US),
                                                        ("net/pytorch/b1/t1", CHANGE_PCT)}
        for trend in cases:
            assert trend.points == made["points"][trend.case]
            assert {s.machine for s in trend.series} == {AMD, INTEL}  # one series per machine, never mixed
        steps = found_steps(cases)
        assert [(f.case, f.machine, f.worse) for f in steps] == [("net/pytorch/b1", AMD, True)]
        assert (steps[0].last_before.commit, steps[0].first_after.commit) == ("05" * 20, "06" * 20)
        gate = store.run(made["ids"][6])
        assert gate.record.passed is False and gate.record.measurements[0].failed
    with HistoryStore(tmp_path / "h.sqlite") as again:  # reopened: the same runs, not a new database
        assert len(again.runs()) == 48


def test_a_throughput_that_falls_is_worse(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        for i, value in enumerate([1000.0] * 5 + [800.0] * 5):
            store.add(RunRecord("bench", START + timedelta(hours=i), AMD,
                                measurements=(Measurement("net/onnxruntime/b64", THROUGHPUT, value),)))
        (step,) = found_steps(trends(store))
        assert step.worse and not step.step.up


def test_an_older_schema_is_migrated_in_place_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    with HistoryStore(path) as store:
        fill_history(store, runs_per_machine=3)

    def add_note_column(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE optcv_runs ADD COLUMN note TEXT"))

    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        assert migrate(conn, target=2, steps={1: add_note_column}) == 1
        assert schema_version(conn) == 2
        assert conn.execute(sa.text("SELECT count(*) FROM optcv_runs")).scalar() == 12  # rows kept
        assert "note" in {c["name"] for c in sa.inspect(conn).get_columns("optcv_runs")}
    engine.dispose()
    with pytest.raises(HistoryError, match="schema version 2, newer than this optcv's 1"):
        HistoryStore(path)
    result = cli("history", "runs", "--history", str(path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "upgrade optcv" in result.stderr


WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timezone
    from optcv.history.records import Machine, Measurement, RunRecord
    from optcv.history.store import HistoryStore
    location, tag, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    machine = Machine("CPU " + tag, ("avx2",), 2)  # each writer also inserts a machine row of its own
    shared = Machine("shared CPU", ("avx2",), 2)  # and both race to insert this one
    with HistoryStore(location) as store:
        for i in range(runs):
            store.add(RunRecord("bench", datetime.now(timezone.utc), shared if i % 2 else machine, tag * 40,
                                measurements=tuple(Measurement(f"{tag}/case{k}", "latency_us", float(i))
                                                   for k in range(5))))
""")


def _concurrent_writers(location: str, writers: int = 3, runs: int = 15) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, location, tag, str(runs)], stderr=subprocess.PIPE,
                              text=True) for tag in "abc"[:writers]]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    with HistoryStore(location) as store:
        stored = store.runs()
        assert len(stored) == writers * runs
        assert all(len(r.record.measurements) == 5 for r in stored)
        assert len({r.record.machine for r in stored}) == writers + 1


def test_concurrent_writers_to_sqlite_lose_nothing(tmp_path):
    _concurrent_writers(str(tmp_path / "h.sqlite"))


@pytest.fixture
def postgres_database():
    """A fresh database on the PostgreSQL server .ci/run starts, dropped afterwards."""
    url = os.environ.get("OPTCV_TEST_POSTGRES_URL")
    if not url:
        skip_or_fail("set OPTCV_TEST_POSTGRES_URL to a PostgreSQL URL (with optcv[postgres] installed) to test the "
                     "history on PostgreSQL; .ci/run starts one")
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"optcv_history_{os.getpid()}_{time.time_ns()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.full  # needs the PostgreSQL server .ci/run starts
def test_postgresql_keeps_the_same_history_and_takes_concurrent_writers(postgres_database):
    with HistoryStore(postgres_database) as store:
        made = fill_history(store, runs_per_machine=8, step_at=4)
        steps = found_steps(trends(store))
        assert [(f.case, f.machine) for f in steps] == [("net/pytorch/b1", AMD)]
        assert store.run(made["ids"][4]).record.passed is False
    with sa.create_engine(postgres_database).begin() as conn:
        conn.execute(sa.text("DELETE FROM optcv_measurements"))
        conn.execute(sa.text("DELETE FROM optcv_runs"))
    _concurrent_writers(postgres_database)


def _gate_result(change: float, verdict: str) -> dict:
    finding = {"case": "tutorial/pytorch/b1/t1", "base_median_us": 100.0, "head_median_us": 100 + change,
               "change_pct": change, "ci_low_pct": change - 1, "ci_high_pct": change + 1, "threshold_pct": 3.0,
               "verdict": verdict, "rounds": 30, "calls_per_turn": 50}
    return {"schema": "optcv-ab-gate/1", "base": {"revision": "HEAD~1 (abc)"}, "head": {"revision": None},
            "protocol": {}, "environment": {"cpu": "AMD EPYC", "cpu_count": 2, "isa": ["avx2"],
                                            "versions": {"torch": "2.14.1"}},
            "seconds": 40.0, "notes": [], "findings": [finding], "first_pass_of_retested": []}


def test_results_of_every_kind_are_read_with_their_intervals():
    gate = record_of(_gate_result(6.0, "regression"), commit="c" * 40)
    assert (gate.kind, gate.passed, gate.commit) == (GATE, False, "c" * 40)
    change = next(m for m in gate.measurements if m.metric == CHANGE_PCT)
    assert (change.value, change.low, change.high, change.threshold_pct) == (6.0, 5.0, 7.0, 3.0)
    assert record_of(_gate_result(0.5, "no significant change")).passed is True

    imported = record_of_file(BASELINE)
    assert imported.kind == "pytest-benchmark" and len(imported.measurements) == 28
    assert imported.commit == "556c6b6b3d452a6d6b5abbb8649ab2a79780ee24"
    assert "not recorded" in imported.machine.label()  # a file without ISA flags is never another machine's
    first = imported.measurements[0]
    assert first.low < first.value < first.high

    with pytest.raises(HistoryInputError, match="schema 'optcv-results/1'"):
        record_of({"schema": "optcv-results/1"}, source="results.json")


def test_bench_results_carry_the_median_interval(tiny_tutorial, tmp_path):
    from optcv.measure.latency import BenchConfig, run_bench
    from optcv.runtime import make_predictor

    images = np.random.default_rng(0).integers(0, 255, (16, 3, 32, 32), dtype=np.uint8)
    config = BenchConfig(n_single=60, chunk=10, warmup=5, batch_sizes=(8,), batched_images=16, batched_rounds=3,
                         calibration_calls=5, bootstrap=50)
    result = run_bench({"pytorch": [make_predictor("pytorch", tiny_tutorial, 1)]}, images, config, model="tiny")
    record = record_of({**result.to_dict(), "environment": {**result.environment, "isa": ["avx2"]}})
    latency = next(m for m in record.measurements if m.metric == LATENCY_US)
    assert latency.case == "tiny/pytorch/b1" and latency.n == 60
    assert latency.low <= latency.value <= latency.high
    assert next(m for m in record.measurements if m.metric == THROUGHPUT).case == "tiny/pytorch/b8"


def test_cli_imports_shows_and_draws(tmp_path):
    db = str(tmp_path / "h.sqlite")
    gate_file = tmp_path / "gate.json"
    gate_file.write_text(json.dumps(_gate_result(6.0, "regression")))
    result = cli("history", "import", str(BASELINE), str(gate_file), "--commit", "d" * 40, "--history", db)
    assert result.returncode == 0, result.stderr
    assert "pytest-benchmark, 28 numbers" in result.stdout and "gate, 2 numbers" in result.stdout
    shown = cli("history", "show", "tutorial/*/b1/t1", "--metric", "change_pct", "--history", db)
    assert shown.returncode == 0 and "regression" in shown.stdout and "dddddddddd" in shown.stdout
    drawn = cli("history", "trend", "tutorial-pytorch-t1", "--out", str(tmp_path / "png"), "--history", db)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "png" / "tutorial-pytorch-t1__latency_us.png").read_bytes()[:4] == b"\x89PNG"


def test_a_gate_that_timed_nothing_is_imported_as_nothing_beside_the_files_that_have_numbers(tmp_path):
    """The nightly imports the suite's --gate-json whatever the gate did: after a commit that left the timed code
    alone the file says so (it once stopped the nightly with 'has schema optcv-gate-same-code/1')."""
    from optcv.gate.run import SameCode

    db = str(tmp_path / "h.sqlite")
    same, gate_file = tmp_path / "same.json", tmp_path / "gate.json"
    same.write_text(json.dumps(SameCode("HEAD~1 (abc)", "working tree", "0123").to_dict()))
    gate_file.write_text(json.dumps(_gate_result(0.0, "no significant change")))
    result = cli("history", "import", str(same), str(gate_file), "--history", db)
    assert result.returncode == 0, result.stderr
    assert f"nothing imported from {same}" in result.stdout and "gate, 2 numbers" in result.stdout
    with HistoryStore(db) as store:
        assert len(store.runs()) == 1


def test_an_unreadable_or_foreign_database_is_refused_and_left_as_it_was(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database\n" * 100)
    foreign = tmp_path / "other.sqlite"
    engine = sa.create_engine(f"sqlite:///{foreign}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"))
    engine.dispose()
    for path, expected in ((text, "file is not a database"), (foreign, "tables of something else (invoices)")):
        before = path.read_bytes()
        result = cli("history", "runs", "--history", str(path))
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert path.read_bytes() == before and not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("args, expected", [
    (["history", "show", "no-such-case"], "no case matching no-such-case"),
    (["history", "import", "README.md"], "result file README.md cannot be read"),
    (["history", "import", "benchmarks/gate_thresholds.json"], "has schema 'optcv-gate-thresholds/1'"),
    # With optcv[postgres] installed, the connection fails; without it (the README's install), the driver is named.
    (["history", "runs", "--history", "postgresql://optcv@127.0.0.1:9/none"],
     "the history database postgresql+psycopg://optcv@127.0.0.1:9/none"),
    (["history", "html", "dash", "--history", "/no-such-folder-optcv/h.sqlite"], "no history at /no-such-folder"),
])
def test_bad_history_input_is_one_line_and_exit_2(tmp_path, args, expected):
    HistoryStore(tmp_path / "h.sqlite").close()  # an empty history, so that only the input is wrong
    history = [] if "--history" in args else ["--history", str(tmp_path / "h.sqlite")]
    result = cli(*args, *history)
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not Path("/no-such-folder-optcv").exists()  # reading never creates a history


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_or_fail("the dashboard test needs a real browser: install Debian's chromium (apt-get install chromium); "
                     ".ci/run installs it")
    return str(found)


def test_the_dashboard_renders_in_a_real_browser_offline(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        made = fill_history(store)
    out = tmp_path / "dashboard"
    written = cli("history", "html", str(out), "--history", str(tmp_path / "h.sqlite"))
    assert written.returncode == 0, written.stderr
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched: every script is in the folder
    browser = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=5000"]
    shown = subprocess.run([*browser, "--dump-dom", (out / "index.html").as_uri()], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    console = [line for line in shown.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    dom = shown.stdout
    assert 'data-rendered="3"' in dom and "data-errors" not in dom
    assert dom.count('<svg class="chart"') == 3
    assert dom.count('class="series"') == 6  # three cases, two machines each
    assert len(re.findall(r'<circle[^>]*class="point', dom)) == sum(made["points"].values())
    assert dom.count('class="point failed"') == made["failed_gates"] == 1
    assert dom.count('class="step worse"') == 1
    assert 'href="runs/' in dom and (out / "runs" / f"{made['ids'][6]}.html").is_file()
    artifacts = Path(os.environ.get("OPTCV_ARTIFACTS", tmp_path / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "history-dashboard.png"
    taken = subprocess.run([*browser, "--window-size=1500,1100", f"--screenshot={shot}", (out / "index.html").as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG", taken.stderr[-2000:]
    steps_page = (out / "regressions.html").read_text()
    assert "net/pytorch/b1" in steps_page and "optcv bisect --good " + "05" * 6 in steps_page


def test_the_dashboard_opens_with_an_overview_and_its_charts_use_the_width_with_every_label_whole(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        fill_history(store)
        store.add(RunRecord(GATE, START + timedelta(days=5), INTEL, "ff" * 20, "main", {}, passed=False,
                            measurements=(Measurement("net/pytorch/b1/t1", CHANGE_PCT, 9.0, 7.0, 11.0, 30,
                                                      "regression", 3.0),)))
    out = tmp_path / "dashboard"
    assert cli("history", "html", str(out), "--history", str(tmp_path / "h.sqlite")).returncode == 0
    browser = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    layout = _layout_at(out, browser, width=1400)
    assert layout["cut"] == [], layout  # every tick, commit and label lies whole inside its chart
    assert layout["columns"] >= 2  # the charts use the width: at 1,400 px, two or more side by side
    # The overview first, a row per case and machine: the newest gate that failed on top, then the stepped-worse
    # series, then the rest.
    assert layout["rows"] == 6 and layout["statuses"][:2] == ["failed", "worse"], layout
    assert set(layout["statuses"][2:]) == {"steady"}, layout
    assert layout["overviewAboveCharts"]


# Run after dashboard.js has drawn (a DOMContentLoaded listener added after its own): where each label and chart lies.
LAYOUT_PROBE = """<script>
document.addEventListener("DOMContentLoaded", () => {
  const cut = [];
  for (const svg of document.querySelectorAll("svg.chart")) {
    const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
    for (const text of svg.querySelectorAll("text")) {
      const b = text.getBBox();
      if (b.x < 0 || b.y < 0 || b.x + b.width > w || b.y + b.height > h) cut.push(text.textContent);
    }
  }
  const tops = [...document.querySelectorAll("section.case")].map(s => Math.round(s.getBoundingClientRect().top));
  const rows = [...document.querySelectorAll("#overview tbody tr")];
  document.body.dataset.layout = JSON.stringify({
    cut, columns: tops.filter(t => t === tops[0]).length, rows: rows.length,
    statuses: rows.map(r => r.querySelector("td.status").textContent),
    overviewAboveCharts: document.getElementById("overview").getBoundingClientRect().bottom
      <= document.getElementById("charts").getBoundingClientRect().top});
});
</script>"""


def _layout_at(out: Path, browser: list[str], width: int) -> dict:
    probe = out / "index-probe.html"  # the page as written, with the probe after its scripts
    probe.write_text((out / "index.html").read_text().replace("</head>", LAYOUT_PROBE + "</head>", 1))
    shown = subprocess.run([*browser, f"--window-size={width},1000", "--dump-dom", probe.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    found = re.search(r'data-layout="([^"]*)"', shown.stdout)
    assert found, shown.stdout[:2000]
    return json.loads(html.unescape(found.group(1)))


def test_a_run_on_an_uncommitted_tree_is_marked(tmp_path):
    from optcv.history.recording import record_result

    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m",
                                   "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "f.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "f.py"], check=True)
    run_id = record_result(_gate_result(0.0, "no significant change"), tree=repo, location=tmp_path / "h.sqlite")
    with HistoryStore(tmp_path / "h.sqlite") as store:
        record = store.run(run_id).record
    assert record.details["uncommitted_changes"] is True and record.commit is not None
    assert record.machine.isa == ("avx2",)


def test_a_gate_json_file_is_imported_under_the_commit_its_head_had_checked_out(tmp_path):
    """The suite's --gate-json and `optcv gate --json` files are imported later (the nightly tier): the head side
    says which commit its working tree had, and whether it differed from it."""
    from optcv.gate.sides import Side

    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
    git("init", "-q", "-b", "main")
    (repo / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "x")
    head = Side("head", sys.executable, repo).describe()
    record = record_of({**_gate_result(0.0, "no significant change"), "head": head})
    assert (record.commit, record.branch) == (git("rev-parse", "HEAD"), "main")
    assert "uncommitted_changes" not in record.details
    (repo / "f.py").write_text("x = 2\n")
    changed = record_of({**_gate_result(0.0, "no significant change"), "head": Side("head", sys.executable,
                                                                                     repo).describe()})
    assert changed.details["uncommitted_changes"] is True
    assert "commit" not in Side("base", sys.executable, repo, revision="HEAD~1 (abc)").describe()


def _this_machines_file(path: Path, names: set[str], scale: float, commit: str) -> Path:
    """The committed pytest-benchmark file, as if run on this machine on main, keeping the cases in `names` with
    every time multiplied by `scale`."""
    from optcv.env import cpu_model, isa_flags

    data = json.loads(BASELINE.read_text())
    data["machine_info"].update(cpu=cpu_model(), cpu_count=os.cpu_count(), isa=isa_flags())
    data["commit_info"].update(id=commit, branch="main")
    data["benchmarks"] = [b for b in data["benchmarks"] if b["name"] in names]
    for bench in data["benchmarks"]:
        bench["stats"] = {k: v * scale if k in ("min", "max", "mean", "median") else v
                          for k, v in bench["stats"].items()}
    path.write_text(json.dumps(data))
    return path


def test_a_baseline_per_machine_from_the_latest_runs_on_main_and_the_suite_says_which_it_used(tmp_path):
    db = str(tmp_path / "h.sqlite")
    older = _this_machines_file(tmp_path / "a.json", {"tutorial-pytorch-t1", "tutorial-onnxruntime-t1"}, 1.0, "a" * 40)
    newer = _this_machines_file(tmp_path / "b.json", {"tutorial-pytorch-t1"}, 2.0, "b" * 40)
    storage = tmp_path / "baselines"
    # pytest-benchmark needs its storage under the current folder (its location() is relative to it).
    suite = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "--collect-only", "-p", "no:cacheprovider",
             "--benchmark-compare", f"--benchmark-storage=file://{storage}", "-k", "nothing-at-all"]
    (storage / "Linux-CPython-3.11-64bit").mkdir(parents=True)
    shutil.copy(BASELINE, storage / "Linux-CPython-3.11-64bit" / "0001_baseline.json")
    header = subprocess.run(suite, capture_output=True, text=True, cwd=tmp_path).stdout
    assert "NO BASELINE FOR THIS MACHINE" in header
    assert "recorded on AMD EPYC (2 cores; ISA flags not recorded)" in header

    assert cli("history", "import", str(older), str(newer), str(BASELINE), "--history", db).returncode == 0
    written = cli("history", "baseline", "--out", str(storage), "--history", db)
    assert written.returncode == 0, written.stderr
    (path,) = storage.glob("*/0002_machine-*.json")
    baseline = json.loads(path.read_text())
    medians = {b["name"]: b["stats"]["median"] for b in baseline["benchmarks"]}
    original = {b["name"]: b["stats"]["median"] for b in json.loads(BASELINE.read_text())["benchmarks"]}
    # every case of this machine's runs on main, each from the latest run that has it; the other machine's left out
    assert medians == {"tutorial-pytorch-t1": 2.0 * original["tutorial-pytorch-t1"],
                       "tutorial-onnxruntime-t1": original["tutorial-onnxruntime-t1"]}
    assert baseline["optcv"]["commit_of_each_case"]["benchmarks/test_latency.py::test_single_image_latency"
                                                    "[tutorial-1-pytorch]"] == "b" * 40
    header = subprocess.run(suite, capture_output=True, text=True, cwd=tmp_path).stdout
    assert f"the baseline of this machine, {json.loads(path.read_text())['optcv']['machine']}: {path.name}" in header
    again = cli("history", "baseline", "--out", str(storage), "--history", db)  # refreshed in place, not a new file
    assert again.returncode == 0 and len(list(storage.glob("*/*_machine-*.json"))) == 1
    other = cli("history", "baseline", "--branch", "release", "--out", str(storage), "--history", db)
    assert other.returncode == 2 and "no pytest-benchmark run on branch release" in other.stderr


@pytest.mark.parametrize("step_at, fails", [(9, True), (10, False), (6, False)])
def test_a_scheduled_run_fails_on_the_step_its_own_run_made_claimable_and_only_then(tmp_path, step_at, fails):
    """12 runs per machine, a +20 % step on AMD at run `step_at`: a step needs 3 runs after it, so the 12th run makes
    one at run 9 claimable (a new step: exit 1), one at run 10 is not claimable yet, and one at run 6 was claimable
    three runs ago and was failed on then (exit 0 now; still listed)."""
    db = tmp_path / "h.sqlite"
    with HistoryStore(db) as store:
        fill_history(store, runs_per_machine=12, step_at=step_at)
    done = cli("history", "steps", "--fail-on-new", "--history", str(db))
    assert done.returncode == (1 if fails else 0), done.stdout + done.stderr
    assert ("NEW STEP FOR THE WORSE: net/pytorch/b1" in done.stdout) is fails
    assert ("net/pytorch/b1" in done.stdout) is (step_at != 10)


def test_the_overview_puts_a_failing_newest_gate_first_then_a_step_for_the_worse(tmp_path):
    from optcv.report.overview import SPARK_POINTS, overview_rows, sparkline

    with HistoryStore(tmp_path / "h.sqlite") as store:
        fill_history(store, runs_per_machine=50, step_at=30)
        case_trends = trends(store)
        assert [r.status for r in overview_rows(case_trends)][:1] == ["worse"]  # no newest gate failed yet
        store.add(RunRecord(GATE, START + timedelta(days=30), INTEL, "ff" * 20, "main", {}, passed=False,
                            measurements=(Measurement("net/pytorch/b1/t1", CHANGE_PCT, 9.0, 7.0, 11.0, 30,
                                                      "regression", 3.0),)))
        rows = overview_rows(trends(store))
    assert [(r.status, r.case, r.machine.split()[0]) for r in rows[:2]] == [
        ("failed", "net/pytorch/b1/t1", "Intel"), ("worse", "net/pytorch/b1", "AMD")]
    assert {r.status for r in rows[2:]} == {"steady"} and len(rows) == 6
    assert all(len(r.spark) == SPARK_POINTS for r in rows if r.runs >= SPARK_POINTS)
    assert rows[0].value == 9.0 and rows[0].commit == "ff" * 5
    flat = sparkline([5.0, 5.0, 5.0], failed=False)  # a series that never moved is drawn flat, not divided by zero
    assert flat.count("circle") == 1 and "nan" not in flat
