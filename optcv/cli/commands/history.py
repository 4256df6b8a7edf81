"""`optcv history`: the runs kept in the history database: import files, list runs, show a case, draw trends,
write the dashboard, list the steps found."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from optcv.cli.args import positive_int
from optcv.errors import OptcvError
from optcv.history.baseline import baseline_from_history, write_baseline
from optcv.history.records import Machine, now_utc
from optcv.history.store import HISTORY_ENV, HistoryStore, default_location, history_exists
from optcv.history.trends import found_steps, new_worse_steps, trends
from optcv.report.dashboard import write_dashboard
from optcv.report.history_tables import import_line, new_steps_line, runs_rows, steps_markdown, trend_markdown
from optcv.report.tables import markdown_table


def add_history_option(parser: argparse.ArgumentParser, recording: bool = False) -> None:
    """--history (and for a command that records, --no-history)."""
    parser.add_argument("--history", metavar="PATH|URL",
                        help=f"the history database: an SQLite file or a database URL (postgresql://…); default "
                             f"${HISTORY_ENV}, else history.sqlite in optcv's cache")
    if recording:
        parser.add_argument("--no-history", action="store_true", help="do not record this run in the history")


BASELINES = Path("benchmarks/baselines")


def record_in_history(args: argparse.Namespace, data: dict[str, Any], *, tree: Path | None = None,
                      summary: str = "") -> None:
    """Record a command's result, unless --no-history: as run at `tree`'s commit (default: the current folder's)."""
    if args.no_history:
        return
    from optcv.history.recording import record_result  # reads every result kind: imports what made them

    location = args.history or default_location()
    run_id = record_result(data, tree=tree or Path.cwd(), location=location, summary=summary,
                           source=f"optcv {args.command}")
    print(f"recorded as run {run_id} in the history {location}", file=sys.stderr)


def add_parser(commands: argparse._SubParsersAction) -> None:
    history = commands.add_parser(
        "history", help="every gate, bench and how-fast run, kept: trends, steps, a dashboard",
        description="optcv gate, bench and how-fast record each run (commit, branch, machine, every per-case number "
                    "with its interval) in a database; pytest-benchmark files are imported. Timings are compared "
                    "only within one machine (CPU model, ISA flags, cores).")
    actions = history.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = actions.add_parser("import", help="record result files: optcv's --json files or pytest-benchmark's")
    imported.add_argument("files", nargs="+", type=Path, help="result files to record")
    imported.add_argument("--commit", help="the commit the files measured (default: what the file says, if anything)")
    imported.add_argument("--branch", help="the branch the files measured (default: none)")
    listed = actions.add_parser("runs", help="the runs recorded, newest last")
    listed.add_argument("--kind", help="only runs of this kind (gate, bench, how-fast, pytest-benchmark, bisect)")
    listed.add_argument("--last", type=positive_int, default=30, help="how many of the newest runs")
    shown = actions.add_parser("show", help="a case's numbers across runs, per machine, with the steps found")
    shown.add_argument("cases", nargs="+", metavar="CASE", help="case names or globs (e.g. 'tutorial/*/b1/t1')")
    shown.add_argument("--metric", help="only this measure (latency_us, images_per_s, change_pct)")
    drawn = actions.add_parser("trend", help="a PNG per case: its values over runs, a line per machine")
    drawn.add_argument("cases", nargs="+", metavar="CASE", help="case names or globs")
    drawn.add_argument("--metric", help="only this measure (latency_us, images_per_s, change_pct)")
    drawn.add_argument("--out", type=Path, default=Path("history-trends"), help="folder for the PNG files")
    page = actions.add_parser("html", help="the dashboard: static pages that work offline")
    page.add_argument("out", type=Path, help="folder to write index.html, regressions.html and runs/ into")
    page.add_argument("--cases", nargs="+", default=["*"], metavar="GLOB", help="only these cases (default: all)")
    stepped = actions.add_parser("steps", help="the step changes found in every case's history")
    stepped.add_argument("--cases", nargs="+", default=["*"], metavar="GLOB", help="only these cases (default: all)")
    stepped.add_argument("--fail-on-new", action="store_true",
                         help="exit 1 when a machine's newest run made a step for the worse claimable (a scheduled "
                              "run's check: each step fails once, when it is first found)")
    based = actions.add_parser(
        "baseline", help="a pytest-benchmark baseline per machine, from the latest runs on main",
        description="For one machine, the latest entry of every case from the pytest-benchmark runs recorded on the "
                    "branch, written as OUT/<platform>/NNNN_machine-KEY.json, which `pytest benchmarks "
                    "--benchmark-compare` picks on that machine.")
    based.add_argument("--out", type=Path, default=BASELINES, help="pytest-benchmark's storage folder")
    based.add_argument("--branch", default="main", help="the branch whose runs make the baseline (default %(default)s)")
    based.add_argument("--machine", default="this", metavar="KEY",
                       help="the machine key (`optcv history runs` shows machines), default: this machine")
    for action in (imported, listed, shown, drawn, page, stepped, based):
        add_history_option(action)
    history.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    location = args.history or default_location()
    if args.action != "import" and not history_exists(location):  # reading must not create an empty one
        raise OptcvError(f"no history at {location}: give --history (or {HISTORY_ENV}) the file or URL that "
                         "`optcv history import` or a gate recorded into")
    with HistoryStore(location) as store:
        if args.action == "import":
            from optcv.history.ingest import NothingTimed, record_of_file

            results = [record_of_file(path, commit=args.commit, branch=args.branch) for path in args.files]
            for path, result in zip(args.files, results, strict=True):
                print(import_line(path, result, None if isinstance(result, NothingTimed) else store.add(result)))
        elif args.action == "runs":
            print(markdown_table(runs_rows(store.runs(kind=args.kind, limit=args.last))) or "no runs recorded")
        elif args.action in ("show", "trend"):
            chosen = trends(store, args.cases, [args.metric] if args.metric else None)
            if not chosen:
                raise OptcvError(f"no case matching {' '.join(args.cases)} in the history {store.url}; "
                                 "`optcv history runs` lists what is recorded")
            if args.action == "show":
                print("\n\n".join(trend_markdown(t) for t in chosen))
            else:
                from optcv.report.history import plot_trend, trend_file_name  # matplotlib

                for trend in chosen:
                    print(f"wrote {plot_trend(trend, args.out / trend_file_name(trend))}")
        elif args.action == "html":
            chosen = trends(store, args.cases)
            index = write_dashboard(args.out, chosen, found_steps(chosen), store.runs(), store.safe_url, now_utc())
            print(f"wrote {index} ({len(chosen)} charts)")
        elif args.action == "steps":
            chosen = trends(store, args.cases)
            print(steps_markdown(found_steps(chosen)))
            new = new_worse_steps(chosen) if args.fail_on_new else []
            if new:
                print(new_steps_line(new))
                return 1
        else:
            machine = _machine(store, args.machine)
            path = write_baseline(args.out, baseline_from_history(store, machine, args.branch))
            print(f"wrote {path}: the baseline of {machine.label()} (key {machine.key})")
    return 0


def _machine(store: HistoryStore, key: str) -> Machine:
    if key == "this":
        from optcv.history.ingest import this_machine

        return this_machine()
    known = {m.key: m for m in store.machines()}
    if key not in known:
        listed = "; ".join(f"{k}: {m.label()}" for k, m in known.items()) or "none recorded"
        raise OptcvError(f"no machine {key!r} in the history; known machines: {listed}")
    return known[key]
