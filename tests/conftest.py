"""Shared test fixtures: short socket directories and condition waits."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh temporary directory with a short path (Unix socket paths must stay < 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
