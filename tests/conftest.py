"""Fixtures shared across the test packages."""

import os
from pathlib import Path

import pytest
from tiny_fashion import write_tiny_fashion

from bnlab.norm.kernels.build import cache_dir

# Tests point XDG_CACHE_HOME at temporary directories (data caches); the compiled kernels
# stay in one place for the whole session and every process it starts.
os.environ.setdefault("BNLAB_KERNEL_CACHE", str(cache_dir()))


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny IDX dataset directory; caches and env redirected into tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    return write_tiny_fashion(tmp_path / "data")
