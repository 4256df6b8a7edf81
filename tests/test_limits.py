import numpy as np
import pytest
import torch

from optcv.measure.limits import GemmPeak, efficiency, identity_model, measure_gemm_peak, runtime_overheads
from optcv.training.models import IdentityNet, count_macs

PEAK = GemmPeak(threads=1, size=1024, gmac_per_s=40.0, gmac_per_s_min=38.0, gmac_per_s_max=41.0, repeats=7)


def test_gemm_peak_is_measured_and_threads_restored():
    before = torch.get_num_threads()
    peak = measure_gemm_peak(1, size=128, repeats=3, min_seconds=0.002)
    assert torch.get_num_threads() == before
    assert 0 < peak.gmac_per_s_min <= peak.gmac_per_s <= peak.gmac_per_s_max
    assert "torch.mm fp32 128x128, 1 thread(s), median of 3" in peak.source
    with pytest.raises(ValueError):
        measure_gemm_peak(0)


def test_efficiency_against_the_peak():
    # 0.65 MMAC at 25 µs per call: 26 GMAC/s, 65 % of a 40 GMAC/s peak; its floor is 16.25 µs.
    found = efficiency(650_000, 25e-6, 1, PEAK, overhead_us=10.0)
    assert found.achieved_gmac_per_s == pytest.approx(26.0)
    assert found.peak_fraction == pytest.approx(0.65)
    assert found.compute_floor_us == pytest.approx(16.25)
    assert found.overhead_bound is False
    batched = efficiency(650_000, 64 * 20e-6, 64, PEAK, overhead_us=10.0)
    assert batched.us_per_image == pytest.approx(20.0) and batched.compute_floor_us == pytest.approx(64 * 16.25)


@pytest.mark.parametrize("overhead_us, bound", [(16.0, False), (16.5, True), (None, None)])
def test_overhead_bound_at_its_boundary(overhead_us, bound):
    assert efficiency(650_000, 25e-6, 1, PEAK, overhead_us=overhead_us).overhead_bound is bound


def test_identity_model_computes_nothing_and_runs_on_every_backend(tmp_path):
    from optcv.backends.base import all_closed
    from optcv.runtime import ModelSource, make_predictor

    assert count_macs(IdentityNet()) == 0
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    source = ModelSource(*identity_model(tmp_path, images))
    with all_closed([make_predictor(b, source, 1) for b in ("pytorch", "onnxruntime")]) as predictors:
        outputs = [p.predict(images[:3]) for p in predictors]
    assert outputs[0].shape == (3, 10)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)
    backends = ["pytorch", "onnxruntime", "onnxruntime-int8"]  # every backend `optcv bench` can time
    overheads = runtime_overheads(backends, 1, images, tmp_path, calls=20)
    assert set(overheads) == set(backends) and all(v > 0 for v in overheads.values())
