"""Fixtures shared across the test packages."""

from pathlib import Path

import pytest
from tiny_fashion import write_tiny_fashion


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny IDX dataset directory; caches and env redirected into tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    return write_tiny_fashion(tmp_path / "data")
