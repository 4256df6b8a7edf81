"""The history at the size a team reaches: 1,000 runs of 20 cases on two machines. Its dashboard is written (the
whole `optcv history html` command) and drawn by headless Chromium (from navigation to the last chart, as the page
measures itself) within budgets derived from measured runs (benchmarks/budgets.json), each the median of three
tries."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from benchmarks.budgets import budget
from optcv.history.records import LATENCY_US
from optcv.history.store import HistoryStore, machines, measurements, runs
from tests.history_data import AMD, INTEL, START
from tests.test_history import CHROMIUM_FLAGS, _chromium

RUNS, CASES = 1000, 20
TRIES = 3
WRITE, DRAW = budget("dashboard_write_seconds"), budget("dashboard_draw_ms")


def _fill(store: HistoryStore) -> None:
    """Inserted in bulk: the test is of reading and drawing, not of 1,000 writers."""
    rng = np.random.default_rng(0)
    with store.transaction() as conn:
        ids = {}
        for machine in (AMD, INTEL):
            conn.execute(machines.insert().values(key=machine.key, cpu=machine.cpu, isa='["avx2"]',
                                                  cores=machine.cores))
            ids[machine] = conn.execute(sa.select(machines.c.id).where(machines.c.key == machine.key)).scalar_one()
        conn.execute(runs.insert(), [
            {"id": i + 1, "kind": "bench", "recorded_at": (START + timedelta(hours=i)).isoformat(),
             "machine_id": ids[AMD if i % 2 else INTEL], "commit": f"{i:040x}", "branch": "main", "versions": "{}",
             "passed": None, "summary": "", "source": "test", "details": "{}"} for i in range(RUNS)])
        rows = []
        for i in range(RUNS):
            for case in range(CASES):
                value = 100.0 * (1.1 if i > 600 and case == 3 else 1.0) * (1 + rng.normal(0, 0.01))
                rows.append({"run_id": i + 1, "case_name": f"net{case}/onnxruntime/b1", "metric": LATENCY_US,
                             "value": value, "low": value * 0.99, "high": value * 1.01, "n": 100})
        conn.execute(measurements.insert(), rows)


def _write(db: Path, out: Path) -> float:
    started = time.perf_counter()
    written = subprocess.run([sys.executable, "-m", "optcv", "history", "html", str(out), "--history", str(db)],
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    return time.perf_counter() - started


def _draw(page: Path, profile: Path) -> int:
    shown = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                            "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = shown.stdout
    assert f'data-rendered="{CASES}"' in dom and dom.count("<circle") == RUNS * CASES and "data-errors" not in dom
    return int(dom.split('data-render-ms="', 1)[1].split('"', 1)[0])


@pytest.mark.full
def test_a_thousand_runs_draw_within_their_budget(tmp_path):
    """Each budget holds for the median of three tries: one slow start of the machine's first browser or
    interpreter is not the page's speed (one try read 1,670 ms where the next four read 520–1,100)."""
    db = tmp_path / "history.sqlite"
    with HistoryStore(db) as store:
        _fill(store)
    out = tmp_path / "dash"
    html_seconds = [_write(db, out) for _ in range(TRIES)]
    render_ms = [_draw(out / "index.html", tmp_path / f"profile-{i}") for i in range(TRIES)]
    print(f"{RUNS} runs x {CASES} cases: optcv history html " + ", ".join(f"{s:.2f}" for s in html_seconds)
          + " s; Chromium drew the page in " + ", ".join(map(str, render_ms)) + " ms")
    assert statistics.median(html_seconds) <= WRITE.limit, f"written in {html_seconds} s; budget {WRITE.describe()}"
    assert statistics.median(render_ms) <= DRAW.limit, f"drawn in {render_ms} ms; budget {DRAW.describe()}"
    assert "net3/onnxruntime/b1" in (out / "regressions.html").read_text()  # the step at run 600
