import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh user cache (``ASYNDBT_CACHE``) for the test."""
    monkeypatch.setenv("ASYNDBT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
