"""A DRA driver keeps its sockets: a file removed while it serves is served again."""

from __future__ import annotations

import time

import pytest

from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import DRIVER, DriverRunner, add_claim, prepare_ok, result

pytestmark = pytest.mark.asyncio

UID = "0b5c8b55-6c1f-4c8e-9f0a-0000000000aa"


class TestSocketsKept:
    async def test_registration_socket_put_back(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """The registration socket unlinked: re-created at once, kubelet registers anew."""
        driver = await drivers.start()
        first = await dra_kubelet.wait_for_driver(DRIVER)
        driver.registration_socket_path.unlink()
        await dra_kubelet.wait_for_driver(DRIVER, after=first.registered_at)
        assert driver.registration_socket_path.is_socket()
        claim = add_claim(claims, "c1", UID, result("i915-card0"))
        await prepare_ok(dra_kubelet, claim)

    async def test_dra_socket_put_back(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """The DRA socket unlinked: served again at the next check, then registered anew."""
        driver = await drivers.start(kubelet=dra_kubelet)
        before = time.monotonic()
        driver.socket_path.unlink()
        # Found by the safety-net check (every 5 s): the watch is on the registry only.
        await dra_kubelet.wait_for_driver(DRIVER, after=before, timeout=15)
        assert driver.socket_path.is_socket()
        claim = add_claim(claims, "c1", UID, result("i915-card0"))
        await prepare_ok(dra_kubelet, claim)
