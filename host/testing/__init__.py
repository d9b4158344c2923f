"""Testing helpers for device plugin authors: a fake kubelet that speaks real gRPC.

:class:`FakeKubelet` plays kubelet's part of Device Plugin API v1beta1 on a Unix socket
directory of your choice; its observation API (:class:`ResourceState` and friends) and
condition waits let a test assert what kubelet would see, without sleeping.
"""

from __future__ import annotations

from host.testing._kubelet import FakeKubelet
from host.testing._kubelet_types import (
    Allocation,
    DeviceState,
    KubeletError,
    KubeletMode,
    Registration,
    Rejection,
    ResourceState,
)

__all__ = [
    "Allocation",
    "DeviceState",
    "FakeKubelet",
    "KubeletError",
    "KubeletMode",
    "Registration",
    "Rejection",
    "ResourceState",
]
