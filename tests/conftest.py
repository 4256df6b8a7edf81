import pytest


@pytest.fixture(scope="package", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Unit tests keep their decoded-data caches out of the user's cache folder; only while tests/ runs, so the
    benchmarks of the same session still reuse their warm cache of reference models."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTCV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optcv-cache"))
        yield
