"""The gates CI trusts.

- The A/B gate (`--gate-against REV`): this tree against a base revision, timed side by side in this run.
- Its proof: real slowdowns at the boundary it claims (5 %) are caught and unchanged code passes; and in a
  throwaway git repository a commit that adds a real 10 % slowdown fails while a comment-only commit passes.
- The older ratio gate (`--ratio-gate`): PyTorch ÷ ONNX Runtime speed-ups against committed ratios, the
  fallback where no base revision exists.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conftest import BACKENDS, REFERENCE_BACKEND
from conftest import full_tier
from optcv._io import write_json, write_text
from optcv.data import default_cache_dir
from optcv.env import fingerprint_differences, machine_fingerprint, same_machine
from optcv.errors import BaselineMissing, SpeedRegression
from optcv.gate.config import GateConfig
from optcv.gate.ratio import RATIO_THREADS, load_json, ratio_bench_config, ratio_gate, ratios_of
from optcv.gate.run import run_ab, run_gate
from optcv.gate.sides import HEAD_TREE, Side
from optcv.gate.verdict import GateResult, GateSetupError, Thresholds, Verdict
from optcv.gate.workers import build_artifacts
from optcv.measure.latency import BenchConfig, run_bench
from optcv.measure.reference import COURSE_MODELS
from optcv.report.gate import outcome_failure_lines, outcome_markdown
from optcv.runtime import backend_unavailable, make_predictor

BOUNDARY_CASES = ("tutorial/*/b1/t1",)
FAST_TIER_CASES = ("*/b1/t1",)  # the fast tier gates batch 1 at one thread; the full tier every case


def test_ab_gate(request, real_data_dir):
    """This tree against --gate-against REV (by default the merge-base with main, else HEAD~1): the one entry
    point the CLI calls too. Without a base revision, the labelled ratio fallback; with the same optcv code on both
    sides, nothing to time (said in the verdict section)."""
    against = request.config.getoption("gate_against")
    if against == "none":
        pytest.skip("--gate-against none: the A/B gate is off in this run")
    option = request.config.getoption
    config = GateConfig() if full_tier(request.config) else GateConfig(cases=FAST_TIER_CASES)
    outcome = run_gate(config, Thresholds.load(option("gate_thresholds"), option("gate_threshold")),
                       against=None if against == "default" else against, base_python=option("gate_base_python"),
                       data_dir=real_data_dir, baseline=option("ratio_baseline"))
    markdown = outcome_markdown(outcome)
    request.config._optcv_gate_lines += [line for line in markdown.splitlines() if line.startswith(("##", "|", "- "))]
    request.config._optcv_gate_lines += outcome_failure_lines(outcome)
    if option("gate_summary"):
        write_text(option("gate_summary"), markdown)
    if option("gate_json"):
        write_json(option("gate_json"), outcome.to_dict())
    outcome.raise_for_regressions()


def test_a_side_builds_from_a_data_folder_given_relative_to_the_callers_folder(tmp_path, real_data_dir,
                                                                                 monkeypatch):
    """The README's test command names the data folder relatively (OPTCV_DATA_DIR=../shared/data/cifar10); each
    side's worker runs in a folder of its own and must still find it (it once failed: 'does not exist')."""
    data = Path(real_data_dir).absolute()
    monkeypatch.chdir(data.parent)
    built = build_artifacts(Side("head", sys.executable, HEAD_TREE), tmp_path, ("tutorial",), Path(data.name),
                            default_cache_dir())
    assert Path(built["models"]["tutorial"]["onnx"]).is_file()


@pytest.mark.full
def test_gate_self_test_at_its_boundary(real_data_dir):
    """A 5 % slowdown of the shared path is caught at batch 1 in both backends; unchanged code passes."""
    from optcv.gate.selftest import run_self_test

    result = run_self_test(GateConfig(models=("tutorial",), cases=BOUNDARY_CASES), targets=("shared",),
                           levels_pct=(5.0,), repeats=3, unchanged_repeats=2, data_dir=real_data_dir)
    caught = result.detections("shared", 5.0, 3.0)
    assert len(caught) == 2 and all(found >= 2 for found, _ in caught.values()), caught
    runs_failed, runs, _, _ = result.false_alarms(3.0)
    assert (runs_failed, runs) == (0, 2)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=optcv", "-c", "user.email=optcv@localhost", "-C", str(repo), *args],
                   check=True, capture_output=True)


def repository_with_optcv(repo: Path) -> Path:
    """A new git repository whose one commit holds this optcv package."""
    import optcv

    shutil.copytree(Path(optcv.__file__).parent, repo / "optcv", ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "--quiet")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "first")
    return repo


SLOW_ORT_PREDICT = '''
        started = _time.perf_counter_ns()
        logits = self.session.run(self._outputs, {self._input: images})[0]
        end = _time.perf_counter_ns() + (_time.perf_counter_ns() - started) // 10  # a real 10 % slowdown
        while _time.perf_counter_ns() < end:
            pass
        return logits
'''


@pytest.mark.full
def test_gate_in_a_temporary_repository(tmp_path, real_data_dir):
    """A commit that makes ONNX Runtime's predict 10 % slower fails; a comment-only commit after it passes."""
    repo = repository_with_optcv(tmp_path / "repo")
    runtime = repo / "optcv" / "backends" / "onnxruntime.py"
    text = runtime.read_text()
    fast = "        return self.session.run(self._outputs, {self._input: images})[0]\n"
    assert text.count(fast) == 1
    text = text.replace("import numpy as np\n", "import time as _time\n\nimport numpy as np\n", 1)
    runtime.write_text(text.replace(fast, SLOW_ORT_PREDICT))
    _git(repo, "commit", "--quiet", "-am", "slower")
    config = GateConfig(models=("tutorial",), cases=("tutorial/onnxruntime/b1/t1",))

    slower = run_gate(config, against="HEAD~1", head_tree=repo, repo=repo, data_dir=real_data_dir)
    assert not isinstance(slower, str)
    assert [f.verdict for f in slower.findings] == [Verdict.REGRESSION], slower.findings
    assert 7 < slower.findings[0].change_pct < 13

    runtime.write_text(runtime.read_text().replace("# a real 10 % slowdown", "# a real 10 % slowdown (noted)"))
    _git(repo, "commit", "--quiet", "-am", "comment only")
    comment = run_gate(config, against="HEAD~1", head_tree=repo, repo=repo, data_dir=real_data_dir)
    assert not isinstance(comment, str)
    assert not comment.regressions, comment.findings


@pytest.mark.full
def test_gate_times_a_base_revision_from_before_the_package_layout(tmp_path, real_data_dir):
    """The base is optcv as it was before the move into packages (flat modules), the head this tree: both build
    their models with their own code and are timed; the worker finds each side's modules in its own layout."""
    root = Path(__file__).resolve().parents[1]
    moved = subprocess.run(["git", "-C", str(root), "rev-list", "-1", "HEAD", "--", "optcv/ab.py"],
                           capture_output=True, text=True, check=True).stdout.strip()
    repo = tmp_path / "repo"
    repo.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", f"{moved}~1", "optcv"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    assert (repo / "optcv" / "ab.py").is_file() and not (repo / "optcv" / "gate" / "__init__.py").exists()
    _git(repo, "init", "--quiet")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "flat layout")
    shutil.rmtree(repo / "optcv")
    shutil.copytree(root / "optcv", repo / "optcv", ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", "packages")
    config = GateConfig(models=("tutorial",), cases=("tutorial/onnxruntime/b1/t1",))
    result = run_ab(config, against="HEAD~1", head_tree=repo, repo=repo, data_dir=real_data_dir)
    assert isinstance(result, GateResult), result
    assert [f.case for f in result.findings] == ["tutorial/onnxruntime/b1/t1"]
    assert result.base["code_hash"] != result.head["code_hash"]


@pytest.mark.full
def test_gate_without_a_base_revision_falls_back_to_ratios(tmp_path, real_data_dir):
    """A repository with one commit has no base: the gate says so and returns the reason."""
    repo = repository_with_optcv(tmp_path / "repo")
    reason = run_ab(GateConfig(models=("tutorial",)), head_tree=repo, repo=repo, data_dir=real_data_dir)
    assert isinstance(reason, str) and "HEAD~1" in reason and "first commit" in reason
    with pytest.raises(GateSetupError, match="revision no-such-rev does not exist"):
        run_ab(GateConfig(models=("tutorial",)), against="no-such-rev", head_tree=repo, repo=repo)


# ---------------------------------------------------------------------------------------------------------
# The ratio gate (the fallback): speed-ups measured interleaved in this run, against committed ratios.


def gate_predictor(model_sources, model: str, backend: str):
    return make_predictor(backend, model_sources[model], RATIO_THREADS)


def gate_config(request: pytest.FixtureRequest) -> BenchConfig:
    return ratio_bench_config(request.config.getoption("gate_images"))


@pytest.mark.full
@pytest.mark.parametrize("model", COURSE_MODELS)  # the committed ratios cover these
def test_speedup_ratio_gate(request, model_sources, test_images, model):
    # A missing optional runtime fails its own latency and parity cases in CI; here it is left out.
    backends = {name: [gate_predictor(model_sources, model, name)] for name in BACKENDS
                if backend_unavailable(name) is None}
    result = run_bench(backends, test_images, gate_config(request), model=model, reference=REFERENCE_BACKEND)
    as_dict = result.to_dict()
    request.config._optcv_ratio_results.append(as_dict)
    for ratio in result.ratios:
        assert ratio.ci_low <= ratio.ratio <= ratio.ci_high
    if not request.config.getoption("ratio_gate"):
        return  # measured and reported in the summary; --ratio-gate turns it into a gate
    try:
        baseline = load_json(request.config.getoption("ratio_baseline"), "ratio baseline")
    except BaselineMissing as exc:
        raise BaselineMissing(f"{exc}; create it with `pytest benchmarks -k ratio_gate --ratio-save` and commit "
                              "it") from None
    differences = fingerprint_differences(baseline.get("environment", {}), machine_fingerprint())
    if not same_machine(differences):
        pytest.skip(f"the ratio baseline was recorded on another machine ({'; '.join(differences)}): reported, not "
                    "compared; refresh it here with --ratio-save, or rely on the A/B gate (--gate-against)")
    if differences:
        request.config._optcv_gate_lines.append(f"ratio baseline recorded with other software ({model}): "
                                                + "; ".join(differences))
    findings = ratio_gate(ratios_of(as_dict), baseline, request.config.getoption("ratio_margin"))
    if any(not f.passed for f in findings):
        raise SpeedRegression("\n".join(f.message() for f in findings))
