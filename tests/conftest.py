import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Unit tests keep their decoded-data caches out of the user's cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTCV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optcv-cache"))
        yield
