"""Statistics and the ratio gate's verdicts, on numbers made in the test (no timing here)."""

import json

import numpy as np
import pytest

from optcv.cli import main
from optcv.env import machine_fingerprint
from optcv.errors import BaselineError
from optcv.gate.ratio import baseline_for, make_baseline, ratio_gate, ratios_of
from optcv.measure.latency import (
    LatencyStats,
    bootstrap_median_ci,
    paired_ratio,
    throughput_stats,
    time_batched_rounds,
    time_interleaved,
)


def test_latency_stats():
    stats = LatencyStats.from_samples(np.arange(1, 101, dtype=float))
    assert (stats.n, stats.mean_us, stats.median_us, stats.min_us) == (100, 50.5, 50.5, 1.0)
    assert stats.p95_us == pytest.approx(95.05)


def test_paired_ratio_uses_per_chunk_medians():
    reference = np.concatenate([np.full(10, 100.0), np.full(10, 200.0)])  # the machine slowed down midway
    backend = reference / 4
    ratio = paired_ratio({"a": reference, "b": backend}, "a", "b", chunk=10)
    assert ratio.ratio == pytest.approx(4.0) and ratio.ci_low == pytest.approx(4.0)
    assert ratio.chunk_ratios == [4.0, 4.0] and ratio.key == "a/b"


def test_bootstrap_interval_contains_the_median_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    few, many = rng.normal(4, 0.2, 10), rng.normal(4, 0.2, 1000)
    low_few, high_few = bootstrap_median_ci(few)
    low_many, high_many = bootstrap_median_ci(many)
    assert low_few <= np.median(few) <= high_few and low_many <= np.median(many) <= high_many
    assert high_many - low_many < high_few - low_few


class Counting:
    name, classes = "counting", ()

    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    def predict(self, images):
        self.log.append(self.tag)
        return np.zeros((len(images), 10), np.float32)

    def describe(self):
        return {}


def test_time_interleaved_alternates_the_order_every_chunk():
    log: list[str] = []
    images = np.zeros((5, 3, 32, 32), np.uint8)
    samples = time_interleaved([Counting(log, "A"), Counting(log, "B")], images, n=6, chunk=2, warmup=0)
    assert [len(s) for s in samples] == [6, 6]
    assert "".join(log) == "AABBBBAAAABB"


class CountingBatches(Counting):
    def predict(self, images):
        self.log.append((self.tag, len(images)))
        return np.zeros((len(images), 10), np.float32)


def test_batched_rounds_take_turns_in_alternating_order_with_one_warm_up_each():
    log: list[tuple[str, int]] = []
    images = np.zeros((40, 3, 32, 32), np.uint8)
    rates = time_batched_rounds([CountingBatches(log, "A"), CountingBatches(log, "B")], images, batch_size=4,
                                n_images=24, rounds=3)
    assert [r.shape for r in rates] == [(3,), (3,)] and all((r > 0).all() for r in rates)
    assert {size for _, size in log} == {4}  # every call a full batch
    # Round 1: A (warm-up + 2 timed batches), then B; round 2 reversed; no warm-up after the first round.
    assert "".join(tag for tag, _ in log) == "AAA" + "BBB" + "BB" + "AA" + "AA" + "BB"


def test_throughput_stats_give_the_median_of_rounds_with_an_interval_and_n():
    stats = throughput_stats(np.array([100.0, 90.0, 110.0, 105.0, 95.0]))
    assert stats["images_per_s"] == 100.0 and stats["rounds"] == 5
    assert 90.0 <= stats["ci_low"] <= 100.0 <= stats["ci_high"] <= 110.0 and stats["ci_low"] < stats["ci_high"]


def bench_result(ratio, low, high, model="tutorial"):
    return {"schema": "optcv-bench/1", "model": model,
            "ratios": {"pytorch/onnxruntime": {"ratio": ratio, "ci_low": low, "ci_high": high}}}


def test_gate_passes_within_margin_and_fails_below_it():
    baseline, _ = baseline_for(make_baseline([bench_result(4.0, 3.9, 4.1)]), machine_fingerprint())
    assert ratio_gate(ratios_of(bench_result(3.7, 3.6, 3.8)), baseline, 0.10)[0].passed  # 3.8 >= 3.6
    failed = ratio_gate(ratios_of(bench_result(3.0, 2.9, 3.1)), baseline, 0.10)[0]
    assert not failed.passed
    assert failed.message().startswith("SPEED REGRESSION: tutorial:pytorch/onnxruntime speed-up 3.00×")
    assert "baseline 4.00×" in failed.message() and "fails below 3.60×" in failed.message()


def test_gate_needs_every_baseline_ratio_of_a_measured_model():
    baseline, _ = baseline_for(make_baseline([bench_result(4.0, 3.9, 4.1), bench_result(3.0, 2.9, 3.1, model="tuned")]),
                               machine_fingerprint())
    baseline["tutorial:pytorch/openvino"] = {"ratio": 2.0, "ci_low": 1.9, "ci_high": 2.1}
    with pytest.raises(BaselineError, match="did not measure tutorial:pytorch/openvino"):
        ratio_gate(ratios_of(bench_result(4.0, 3.9, 4.1)), baseline)
    with pytest.raises(BaselineError, match="unknown schema"):
        ratios_of({"schema": "something-else"})


def test_gate_cli_exit_codes(tmp_path, capsys):
    (tmp_path / "baseline.json").write_text(json.dumps(make_baseline([bench_result(4.0, 3.9, 4.1)])))
    (tmp_path / "ok.json").write_text(json.dumps(bench_result(3.9, 3.8, 4.0)))
    (tmp_path / "slow.json").write_text(json.dumps(bench_result(2.0, 1.9, 2.1)))
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["gate", str(tmp_path / "ok.json"), "--baseline", str(tmp_path / "baseline.json")]) == 0
    assert main(["gate", str(tmp_path / "slow.json"), "--baseline", str(tmp_path / "baseline.json")]) == 1
    assert "SPEED REGRESSION" in capsys.readouterr().out
    assert main(["gate", str(tmp_path / "ok.json"), "--baseline", str(tmp_path / "missing.json")]) == 2
    assert "baseline" in capsys.readouterr().err
    assert main(["gate", str(tmp_path / "broken.json"), "--baseline", str(tmp_path / "baseline.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_scaled_rounds_keeps_cheap_cases_and_shrinks_costly_ones():
    from optcv.measure.latency import scaled_rounds

    assert scaled_rounds(100e-6, 100, 20, budget_s=2.0) == (100, 20)  # 0.2 s of calls fits: unchanged
    assert scaled_rounds(1e-3, 100, 20, budget_s=2.0) == (100, 20)  # exactly the budget
    assert scaled_rounds(1.1e-3, 100, 20, budget_s=2.0) == (100, 18)  # fewer iterations first
    assert scaled_rounds(10e-3, 100, 20, budget_s=2.0) == (100, 2)
    assert scaled_rounds(40e-3, 100, 20, budget_s=2.0) == (50, 1)  # then fewer rounds
    assert scaled_rounds(2.0, 10, 1, budget_s=4.0) == (5, 1)  # never under the minimum
    with pytest.raises(ValueError):
        scaled_rounds(0, 10, 1, budget_s=1)
