"""Fixtures of the DRA tests: the fake API server from host.testing."""

from __future__ import annotations

from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig

__all__ = ["apiserver", "apiserver_kubeconfig"]
