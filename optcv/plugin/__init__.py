"""optcv's pytest plugin (the `pytest11` entry point `optcv`): in a repository that declares its models,
`pytest --optcv` adds their parity and latency cases (pytest-benchmark: `--benchmark-json`, `--benchmark-autosave`
and `--benchmark-compare` work on them as on any benchmark). In any repository, `pytest --gate-against REV` times
every pytest-benchmark test in both revisions side by side (optcv.plugin.ab), the declared models' latency cases
among them; `--optcv-gate-against REV` is `--optcv --gate-against REV`.

Without these flags it only registers them: a test run of any project with optcv installed is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CASES_MODULE = Path(__file__).resolve().with_name("cases.py")
PLAN = pytest.StashKey[Any]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from optcv.plugin import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("optcv", "optcv: your declared models' parity, latency and A/B gate")
    group.addoption("--optcv", action="store_true",
                    help="add the parity and latency cases of the models declared in pyproject.toml or optcv.toml")
    group.addoption("--optcv-declarations", metavar="FILE",
                    help="the file declaring the models (default: the nearest to the rootdir)")
    group.addoption("--optcv-models", metavar="NAME", nargs="+", help="only these declared models (default: all)")
    group.addoption("--optcv-cases", "--optcv-gate-cases", metavar="GLOB", nargs="+",
                    help="only the latency cases whose names match, like resnet50/onnxruntime/b1/t1 (default: every "
                         "case the declarations list)")
    group.addoption("--optcv-gate-against", metavar="REV", help="--optcv --gate-against REV")
    group.addoption("--optcv-gate-json", metavar="FILE", help="--gate-json FILE")
    group.addoption("--optcv-gate-side", action="store_true",
                    help="this session is one side of the A/B gate (its sessions pass it): a model this revision "
                         "does not declare is left out, and a case whose factory is imported from outside the "
                         "rootdir and the installed packages fails (each side must time its own revision's code)")
    _gate_options(parser)


def _gate_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("gate", "optcv: the A/B gate of every pytest-benchmark test against a base revision")
    group.addoption("--gate-against", metavar="REV",
                    help="time every test that uses the benchmark fixture in this tree and in revision REV, side by "
                         "side, and fail a test that got slower beyond its threshold ('default': the merge-base "
                         "with main, else HEAD~1; 'none': off)")
    group.addoption("--gate-threshold", type=float, help="the gate's default threshold in %% (default 3)")
    group.addoption("--gate-thresholds", metavar="FILE", help="per-test thresholds: an optcv-gate-thresholds/1 file "
                                                              "whose patterns match node ids")
    group.addoption("--gate-json", metavar="FILE", help="write every number of the gate to this JSON file")
    group.addoption("--gate-summary", metavar="FILE", help="write the gate's Markdown summary to this file")
    group.addoption("--gate-even-if-unchanged", action="store_true",
                    help="time the tests even where base and head hold the same code (by default such a run only "
                         "says so, and the tests run as pytest-benchmark alone)")
    group.addoption("--gate-slowdown", metavar="PCT", type=float,
                    help="the gate's self-test on your own tests: slow every head call the gate times by PCT %% "
                         "(a busy wait inside the timed call), to see which change each test can catch")


def active(config: pytest.Config) -> bool:
    return bool(config.getoption("optcv"))


def pytest_configure(config: pytest.Config) -> None:
    from optcv.plugin.ab import register

    _aliases(config)
    register(config)
    if not active(config):
        return
    if config.getoption("optcv") and not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("optcv: --optcv times its cases with pytest-benchmark, which is not installed; "
                                "pip install 'optcv[pytest]'")
    from optcv.errors import OptcvError
    from optcv.plugin.plan import make_plan

    try:
        config.stash[PLAN] = make_plan(config.getoption("optcv_declarations"), config.rootpath,
                                       config.getoption("optcv_models"), config.getoption("optcv_cases"),
                                       gate_side=config.getoption("optcv_gate_side"))
    except OptcvError as exc:  # a bad declaration: one line, as from the CLI
        raise pytest.UsageError(f"optcv: {exc}") from None


def _aliases(config: pytest.Config) -> None:
    """The plugin's first spellings of the gate: `--optcv-gate-against REV` is `--optcv --gate-against REV`."""
    option = config.option
    if option.optcv_gate_against:
        option.optcv = True
        option.gate_against = option.gate_against or option.optcv_gate_against
    option.gate_json = option.gate_json or option.optcv_gate_json


def pytest_gate_session_args(config: pytest.Config) -> list[str]:
    """Each side's gate session collects the declared models' cases from its own tree's declarations."""
    if not active(config):
        return []
    import os

    from optcv.gate.sessions import declared_session_args

    plan = config.stash[PLAN]
    return list(declared_session_args(os.path.relpath(plan.declarations, config.rootpath), tuple(plan.models)))


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect, so they select among these cases too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config):
        return
    # Named "optcv" rather than by the module's path, which lies outside the user's rootdir.
    module = pytest.Module.from_parent(session, path=CASES_MODULE, nodeid="optcv")
    # A kind of case the plan has none of would collect as an empty-parameter skip: left out.
    plan = config.stash[PLAN]
    wanted = {name for name, cases in (("test_optcv_parity", plan.parity), ("test_optcv_latency", plan.latency))
              if cases}
    items.extend(item for item in module.collect() if isinstance(item, pytest.Function) and item.originalname in wanted)
