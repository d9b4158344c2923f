"""Fixtures for framework tests: a fake kubelet and managers served in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from host.deviceplugin import Manager
from host.testing import FakeKubelet


@pytest_asyncio.fixture
async def kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(short_dir)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


ServeFn = Callable[..., Awaitable[Manager]]


@pytest_asyncio.fixture
async def serve(short_dir: Path) -> AsyncIterator[ServeFn]:
    """Start managers as tasks of the test's loop; cancel them all at teardown."""
    tasks: list[asyncio.Task[None]] = []

    async def start(namespace: str, scanner: Any, **kwargs: Any) -> Manager:
        kwargs.setdefault("plugin_dir", short_dir)
        kwargs.setdefault("cdi_dir", short_dir / "cdi")
        kwargs.setdefault("scan_backoff", (0.05, 0.2))
        kwargs.setdefault("register_backoff", (0.05, 0.5))
        manager = Manager(namespace, scanner, **kwargs)
        tasks.append(asyncio.create_task(manager.serve()))
        return manager

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
