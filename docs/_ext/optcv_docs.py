"""The documentation's own tooling, so that pages cannot drift from the code:

- the directive `optcv-declaration-fields model|input` renders the declaration's fields from optcv.declared.schema;
- the directive `optcv-cli` renders every command and option from the parser `optcv` runs (optcv.cli.build_parser),
  its help as plain text: a help string is written for a terminal, so `*` and `|` in it mean themselves;
- after an HTML build, `_static/dashboard-example/` holds a history dashboard written by optcv itself from a small
  synthetic history (two machines, a step, a failing gate), which the dashboard how-to embeds.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from optcv.declared.schema import INPUT_FIELDS, MODEL_FIELDS


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


class DeclarationFields(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        fields = {"model": MODEL_FIELDS, "input": INPUT_FIELDS}[self.arguments[0]]
        lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{f.key}` | {f.toml} | {('`' + _cell(f.default) + '`') if f.default else ''} | "
                  f"{_cell(f.meaning)} |" for f in fields]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="optcv.declared.schema"), self.content_offset, container)
        return container.children


def _plain(text: str) -> nodes.paragraph:
    return nodes.paragraph(text, text)


def _option_entry(parser: argparse.ArgumentParser, action: argparse.Action) -> nodes.definition_list_item:
    formatter = parser._get_formatter()
    names = ", ".join(action.option_strings) or action.dest
    if action.option_strings and action.nargs != 0:
        names += " " + formatter._format_args(action, action.dest.upper())
    term = nodes.term("", "", nodes.literal(names, names))
    help_text = formatter._expand_help(action) if action.help else ""
    return nodes.definition_list_item("", term, nodes.definition("", _plain(help_text)))


def _command_section(parser: argparse.ArgumentParser, name: str, summary: str) -> nodes.section:
    section = nodes.section(ids=[nodes.make_id(name)], names=[nodes.fully_normalize_name(name)])
    section += nodes.title(name, name)
    about = parser.description or summary
    if about:
        section += _plain(about)
    usage = parser.format_usage().strip()
    section += nodes.literal_block(usage, usage)
    options = nodes.definition_list()
    children = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            children += [(f"{name} {sub}", sub_parser, helps.get(sub, ""))
                         for sub, sub_parser in action.choices.items()]
            continue
        options += _option_entry(parser, action)
    if options.children:
        section += options
    for child_name, child, child_summary in children:
        section += _command_section(child, child_name, child_summary)
    return section


class CommandLine(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        from optcv.cli import build_parser

        return [_command_section(build_parser(), "optcv", "")]


def example_history(path: Path) -> None:
    """Three cases on two machines over 16 runs: one latency steps up by 12 % on the first machine at run 10, and
    that machine's newest gate fails."""
    from optcv.history.records import CHANGE_PCT, GATE, LATENCY_US, PYTEST_BENCHMARK, Machine, Measurement, RunRecord
    from optcv.history.store import HistoryStore

    machines = (Machine("AMD EPYC", ("avx", "avx2", "fma"), 2),
                Machine("Intel Xeon", ("avx", "avx2", "avx512f", "fma", "amx_tile"), 2))
    start, rng = datetime(2026, 11, 1, tzinfo=timezone.utc), np.random.default_rng(7)
    with HistoryStore(path) as store:
        for m, machine in enumerate(machines):
            for i in range(16):
                when, commit = start + timedelta(hours=6 * i + m), hashlib.sha1(bytes([i])).hexdigest()
                base = {"resnet18/onnxruntime/b1": 9100.0, "tutorial/pytorch/b1": 190.0}
                values = {case: v * (1.12 if m == 0 and i >= 10 and case.startswith("resnet18") else 1.0)
                          * (1 + rng.normal(0, 0.01)) for case, v in base.items()}
                store.add(RunRecord(PYTEST_BENCHMARK, when, machine, commit, "main", {"torch": "2.14.1"},
                                    measurements=tuple(Measurement(c, LATENCY_US, v, v * 0.99, v * 1.01, 40)
                                                       for c, v in values.items())))
                failed = m == 0 and i == 15
                change = 11.5 if failed else float(rng.normal(0, 0.8))
                store.add(RunRecord(GATE, when + timedelta(minutes=20), machine, commit, "main", {"torch": "2.14.1"},
                                    passed=not failed, measurements=(Measurement(
                                        "resnet18/onnxruntime/b1/t1", CHANGE_PCT, change, change - 1.5, change + 1.5,
                                        40, "regression" if failed else "no significant change", 3.0),)))


def write_example_dashboard(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from optcv.history.store import HistoryStore
    from optcv.history.trends import found_steps, trends
    from optcv.report.dashboard import write_dashboard

    with tempfile.TemporaryDirectory() as scratch:
        example_history(Path(scratch) / "history.sqlite")
        with HistoryStore(Path(scratch) / "history.sqlite") as store:
            chosen = trends(store)
            write_dashboard(Path(app.outdir) / "_static" / "dashboard-example", chosen, found_steps(chosen),
                            store.runs(), "an example history", datetime(2026, 12, 1, tzinfo=timezone.utc))


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("optcv-declaration-fields", DeclarationFields)
    app.add_directive("optcv-cli", CommandLine)
    app.connect("build-finished", write_example_dashboard)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
