"""Shared test fixtures: short socket directories and condition waits."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests check what is built, not how fast: on a loaded CI machine one example can
# take longer than hypothesis' default 200 ms deadline, which would fail a correct build.
settings.register_profile("devplugin", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("devplugin")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh temporary directory with a short path (Unix socket paths must stay < 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
