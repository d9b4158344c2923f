"""Validate objects with the official Kubernetes OpenAPI schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

__all__ = ["SCHEMA_VERSIONS", "assert_schema_valid"]

# resource.k8s.io/v1 exists from 1.34 on: the oldest and the newest schema shipped.
SCHEMA_VERSIONS = ("1.34.0", kubernetes_validate.utils.latest_version())


def assert_schema_valid(obj: dict[str, Any]) -> None:
    """Fail unless ``obj`` passes the strict schema of every version in SCHEMA_VERSIONS."""
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"schema {version}: {exc.message} at {list(exc.path)}") from exc
