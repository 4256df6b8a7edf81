"""`optcv bench --search`: every grid setting timed at every batch size, the fastest kept beside the model,
read back by later runs on this machine only. No assertion here depends on which setting is faster."""

import json

import numpy as np
import pytest

from optcv.cli import main
from optcv.errors import OptcvError
from optcv.measure.search import (
    SearchConfig,
    SearchResult,
    SettingTiming,
    kept_settings,
    run_search,
    save_search,
    search_grid,
    settings_path,
)
from optcv.training.models import TutorialNetConfig
from tests.conftest import export_tiny


@pytest.fixture()
def source(tmp_path):
    return export_tiny(tmp_path, TutorialNetConfig(), seed=0)  # its own folder: the search writes beside it


def timing(backend, batch, us, **settings):
    return SettingTiming(backend, batch, settings, us, us * 0.9, us * 1.1, 5)


def test_the_fastest_setting_per_backend_and_batch_size_is_kept():
    result = SearchResult("m", SearchConfig(), [
        timing("onnxruntime", 1, 30.0, threads=1), timing("onnxruntime", 1, 25.0, threads=2),
        timing("onnxruntime", 64, 9.0, threads=1), timing("onnxruntime", 64, 11.0, threads=2),
        timing("pytorch", 1, 100.0, threads=1, mkldnn=False)])
    assert result.best() == {"onnxruntime": {1: {"threads": 2}, 64: {"threads": 1}},
                             "pytorch": {1: {"threads": 1, "mkldnn": False}}}


def test_search_times_every_setting_and_later_runs_use_what_it_kept(source):
    images = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    config = SearchConfig(batch_sizes=(1, 8), rounds=3, turn_ms=2.0, warmup_ms=1.0)
    result = run_search(source, ["pytorch", "onnxruntime"], images, config, model="m", cores=2)
    for backend in ("pytorch", "onnxruntime"):
        for batch in (1, 8):
            timed = [t.settings for t in result.timings if t.backend == backend and t.batch_size == batch]
            assert timed == search_grid(backend, 2)
    assert {"mkldnn", "channels_last", "threads"} <= set(search_grid("pytorch", 2)[0])
    path = save_search(result, source)
    assert path == settings_path(source) == source.onnx.with_name("m.settings.json")
    kept = kept_settings(source)
    assert kept is not None and set(kept) == {"pytorch", "onnxruntime"}
    assert all(s in search_grid(b, 2) for b, settings in kept.items() for s in settings)

    saved = json.loads(path.read_text())
    saved["environment"]["fingerprint"]["cpu"] = "another CPU"
    path.write_text(json.dumps(saved))
    assert kept_settings(source) is None  # timed elsewhere: not used here
    path.write_text("{")
    with pytest.raises(OptcvError, match="settings.json cannot be read"):
        kept_settings(source)


def test_every_grid_setting_builds_a_predictor_with_the_same_logits(source):
    from optcv.runtime import make_predictor

    images = np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    with make_predictor("pytorch", source, 1) as reference:
        expected = reference.predict(images)
    for backend in ("pytorch", "onnxruntime"):
        for settings in search_grid(backend, 2):
            with make_predictor(backend, source, **settings) as predictor:
                np.testing.assert_allclose(predictor.predict(images), expected, rtol=1e-3, atol=1e-4)
                assert {k: predictor.describe()[k] for k in settings} == settings


@pytest.mark.full  # times the whole grid (16 s): nightly; the search itself is tested above
def test_cli_bench_search_prints_the_grid_and_keeps_the_fastest(source, tiny_data_dir, capsys):
    code = main(["bench", str(source.checkpoint), "--search", "--backends", "onnxruntime", "-n", "40",
                 "--chunk", "20", "--batch-sizes", "4", "--data-dir", str(tiny_data_dir), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "graph_optimization=basic" in out and "kept the fastest" in out and "| yes" in out
    assert "settings: the fastest per batch size from" in out and settings_path(source).is_file()
