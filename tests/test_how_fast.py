"""`optcv how-fast`'s table and plot from a result's numbers (no timing here), and its input errors."""

import matplotlib
import pytest

from optcv.errors import OptcvError
from optcv.measure.howfast import HowFastConfig, calls_for, run_how_fast
from optcv.report.figures import plot_how_fast
from optcv.report.latency import how_fast_markdown, how_fast_rows


def limits_row(backend, batch, threads, us, gmacs, fraction, bound):
    return {"backend": backend, "batch_size": batch, "threads": threads, "us_per_image": us,
            "achieved_gmac_per_s": gmacs, "peak_fraction": fraction, "overhead_bound": bound}


def model_result(name, macs, peak=80.0):
    return {"model": name, "accuracy": {"test_accuracy": 0.529},
            "bench": {"config": {"n_single": 4000},
                      "backends": {"pytorch": {"latency_us": {"median_us": 100.0},
                                               "throughput": {"64": {"images_per_s": 20_000.0}}},
                                   "onnxruntime": {"latency_us": {"median_us": 25.0},
                                                   "throughput": {"64": {"images_per_s": 50_000.0, "ci_low": 48_000.0,
                                                                         "ci_high": 51_000.0, "rounds": 8}}}},
                      "ratios": {"pytorch/onnxruntime": {"backend": "onnxruntime", "ratio": 4.0, "ci_low": 3.9,
                                                         "ci_high": 4.1}}},
            "limits": {"macs_per_image": macs,
                       "peaks": {"1": {"gmac_per_s": peak, "source": "torch.mm"}},
                       "rows": [limits_row("pytorch", 1, 1, 100.0, 6.5, 0.08, True),
                                limits_row("onnxruntime", 1, 1, 25.0, 26.0, 0.33, True),
                                limits_row("pytorch", 64, 1, 50.0, 13.0, 0.16, None),
                                limits_row("onnxruntime", 64, 2, 20.0, 32.5, 0.41, None)]}}


RESULT = {"environment": {"cpu": "Test CPU", "cpu_count": 2, "python": "3.11", "versions": {}},
          "models": [model_result("tutorial", 650_000), model_result("resnet18", 555_000_000, peak=70.0)]}


def test_rows_pair_each_backend_with_its_own_limits_and_ratio():
    rows = how_fast_rows(RESULT)
    assert [(r["model"], r["backend"]) for r in rows] == [("tutorial", "pytorch"), ("tutorial", "onnxruntime"),
                                                          ("resnet18", "pytorch"), ("resnet18", "onnxruntime")]
    ort = rows[1]
    assert ort["b1 vs pytorch"] == "4.00× (3.90–4.10)" and rows[0]["b1 vs pytorch"] == "1"
    assert ort["b64 threads"] == 2 and ort["b64 % of peak"] == "41 %" and ort["b64 GMAC/s"] == 32.5
    assert ort["b1 bound by"] == "overhead" and ort["accuracy"] == "52.9 %"
    text = how_fast_markdown(RESULT)
    assert "tutorial 80 at 1 thread(s); resnet18 70 at 1 thread(s)" in text and "resnet18 555.00" in text
    # Batched images/s: with its interval and rounds where measured so, the bare figure from older results.
    assert ort["b64 images/s (95% CI)"] == "50,000 (48,000–51,000, n=8)"
    assert rows[0]["b64 images/s (95% CI)"] == "20,000"


def test_plot_is_written_and_leaves_matplotlibs_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    path = plot_how_fast(RESULT, tmp_path / "how-fast.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == before


def test_calls_scale_with_a_models_cost_within_bounds():
    config = HowFastConfig(seconds_per_backend=2.0, min_calls=200, max_calls=4000)
    assert calls_for(25e-6, config) == 4000
    assert calls_for(2e-3, config) == 1000
    assert calls_for(0.05, config) == 200


@pytest.mark.parametrize("config, message", [(HowFastConfig(models=("vgg",)), "unknown model vgg"),
                                             (HowFastConfig(backends=("tvm",)), "unknown backend 'tvm'")])
def test_bad_models_or_backends_are_named_before_any_work(config, message):
    with pytest.raises(OptcvError, match=message):
        run_how_fast(config, data_dir="/nonexistent")
