"""The SGX plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from host import Option
from hostplugins._common import as_bool, as_int, as_seconds, plugin_error

__all__ = ["DEFAULT_POD_COUNT", "SgxSettings", "default_pod_count", "options"]

log = logging.getLogger("hostplugins.sgx")

PLUGIN = "sgx"
PODS_PER_CORE = "PODS_PER_CORE"
DEFAULT_POD_COUNT = 110
"""kubelet's default ``--max-pods``: as many enclave users as there can be pods."""


def _usable_cpus() -> int:
    """CPUs this process may run on, as Go's ``runtime.NumCPU`` counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux: every online CPU
        return os.cpu_count() or 1


def default_pod_count(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> int:
    """Return the default enclave and provision limit: ``PODS_PER_CORE`` x CPUs, else 110.

    ``PODS_PER_CORE`` mirrors kubelet's ``--pods-per-core``; as there, 0 means "no
    per-core limit", so it falls back to 110 like an unset or unparsable value (the
    Go plugin would expose 0 devices). ``cpus`` defaults to the CPUs this process may
    use. An unusable value is logged as a warning.
    """
    value = (os.environ if environ is None else environ).get(PODS_PER_CORE, "")
    if value:
        text = value.strip()
        if text.isascii() and text.isdigit() and int(text) > 0:
            return int(text) * (cpus if cpus is not None else _usable_cpus())
        log.warning(
            "%s=%r is not a positive integer; SGX limits default to %d",
            PODS_PER_CORE,
            value,
            DEFAULT_POD_COUNT,
        )
    return DEFAULT_POD_COUNT


def options() -> tuple[Option, ...]:
    """Return the option declarations; the limits' default is :func:`default_pod_count` now."""
    pods = default_pod_count()
    return (
        Option(
            "enclave-limit",
            default=pods,
            help=f"number of sgx.intel.com/enclave devices (containers that may use "
            f"/dev/sgx_enclave at once); default {PODS_PER_CORE} x CPUs, else "
            f"{DEFAULT_POD_COUNT}; 0 exposes none",
        ),
        Option(
            "provision-limit",
            default=pods,
            help="number of sgx.intel.com/provision devices (/dev/sgx_provision); default "
            "as enclave-limit; 0 exposes none",
        ),
        Option(
            "dcap-infra-resources",
            default=False,
            help="also expose the DCAP infrastructure resources 'qe' and 'registration' "
            "(one device each, both nodes; registration also mounts efivarfs by CDI)",
        ),
        Option(
            "scan-interval",
            default=0.0,
            help="seconds between two checks for the SGX nodes; 0 (default) checks once at "
            "start, as the Go plugin does",
        ),
    )


@dataclass(frozen=True, kw_only=True)
class SgxSettings:
    """The SGX plugin's validated settings; construction raises :class:`ConfigError`."""

    enclave_limit: int = field(default_factory=default_pod_count)
    provision_limit: int = field(default_factory=default_pod_count)
    dcap_infra_resources: bool = False
    scan_interval: float = 0.0

    def __post_init__(self) -> None:
        for option, value in (
            ("enclave-limit", self.enclave_limit),
            ("provision-limit", self.provision_limit),
        ):
            if value < 0:
                raise plugin_error(PLUGIN, f"option {option} must be >= 0, got {value}")
        if not self.scan_interval >= 0:
            raise plugin_error(
                PLUGIN,
                f"option scan-interval must be >= 0 seconds (0: check once), "
                f"got {self.scan_interval}",
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SgxSettings:
        """Build settings from the host's parsed option values (missing ones take defaults)."""
        enclave = options.get("enclave-limit")
        provision = options.get("provision-limit")
        pods = default_pod_count() if enclave is None or provision is None else 0
        return cls(
            enclave_limit=pods if enclave is None else as_int(PLUGIN, "enclave-limit", enclave),
            provision_limit=(
                pods if provision is None else as_int(PLUGIN, "provision-limit", provision)
            ),
            dcap_infra_resources=as_bool(
                PLUGIN, "dcap-infra-resources", options.get("dcap-infra-resources", False)
            ),
            scan_interval=as_seconds(PLUGIN, "scan-interval", options.get("scan-interval", 0.0)),
        )
