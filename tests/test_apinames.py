"""The Kubernetes name and value rules shared by DeviceInfo, the DRA builder and the fakes."""

from __future__ import annotations

import pytest

from host._apinames import (
    c_identifier_error,
    dns_label_error,
    dns_subdomain_error,
    label_name_error,
    label_value_error,
    qualified_name_error,
    quantity_error,
    semver_error,
)


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (dns_label_error, ["a", "a-1", "0", "x" * 63], ["", "A", "-a", "a-", "a.b", "x" * 64]),
        (
            dns_subdomain_error,
            ["a", "a.b-c", "gpu.intel.com", "x" * 253],
            ["", "A.b", "a..b", ".a", "a.", "x" * 254],
        ),
        (c_identifier_error, ["a", "_x", "memGB", "a" * 32], ["", "1a", "a-b", "a" * 33]),
        (
            qualified_name_error,
            ["memGB", "gpu.intel.com/memGB", "resource.kubernetes.io/pciBusID"],
            ["", "/x", "Bad.io/x", "a.io/1x", "a.io/", "x" * 64 + "/a"],
        ),
        (
            label_name_error,
            ["a", "gpu.intel.com/unhealthy", "A_b.c-d"],
            ["", "/a", "a/", "a b", "-a", "x" * 64, "Bad/a"],
        ),
        (label_value_error, ["", "a", "A_b.c-d", "x" * 63], ["-a", "a b", "x" * 64]),
        (semver_error, ["1.2.3", "0.0.0-rc.1+b.2"], ["1.2", "v1.2.3", "01.2.3", "1.2.3-"]),
        (
            quantity_error,
            ["1", "16Gi", "1.5", "100m", "1e3", "2E-2", ".5", "+3k", "-1"],
            ["", "1.2.3", "16GB", "Gi", "1 Gi", "e3"],
        ),
    ],
)
def test_rules(check: object, good: list[str], bad: list[str]) -> None:
    """Each rule accepts what the API server accepts and names the problem otherwise."""
    for value in good:
        assert check(value) is None, value  # type: ignore[operator]
    for value in bad:
        message = check(value)  # type: ignore[operator]
        assert isinstance(message, str), value
        assert message
