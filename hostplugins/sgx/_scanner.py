"""The SGX scanner: ``<devfs>/sgx_enclave`` and ``<devfs>/sgx_provision`` as shared resources.

:func:`scan_once` is the whole discovery logic, synchronous and side-effect free, so
tests call it against fake trees; :class:`SgxScanner` runs it once (or periodically).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceTree
from hostplugins._common import PeriodicScanner, add_problem, device_spec, no_hardware
from hostplugins.sgx._options import SgxSettings

__all__ = [
    "CDI_KIND",
    "EFIVARFS_CDI_SPEC",
    "ENCLAVE",
    "NAMESPACE",
    "PROVISION",
    "QE",
    "REGISTRATION",
    "SgxScanner",
    "scan_once",
]

log = logging.getLogger("hostplugins.sgx")

NAMESPACE = "sgx.intel.com"
ENCLAVE = "enclave"
PROVISION = "provision"
QE = "qe"
REGISTRATION = "registration"
CDI_KIND = "intel.cdi.k8s.io/sgx"

EFIVARFS_CDI_SPEC: dict[str, Any] = {
    "cdiVersion": "0.4.0",  # the lowest that has a mount type: what the file carries
    "kind": CDI_KIND,
    "devices": [
        {
            "name": "efivarfs",
            "containerEdits": {
                "mounts": [
                    {
                        "hostPath": "efivarfs",
                        "containerPath": "/run/efivars",
                        "type": "efivarfs",
                        "options": ["rw", "nosuid", "nodev", "noexec", "relatime"],
                    }
                ]
            },
        }
    ],
}
"""The CDI device of ``registration``: a fresh efivarfs at ``/run/efivars``, for the
DCAP registration agent to read the platform manifest from UEFI variables."""


def scan_once(
    settings: SgxSettings,
    *,
    devfs_root: Path,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Check the SGX nodes once and return the device tree.

    Both ``<devfs>/sgx_enclave`` and ``<devfs>/sgx_provision`` must exist (any file
    type), else the tree is empty and a problem says which is missing. Then:
    ``enclave`` has ``enclave-limit`` devices ``sgx-enclave-<i>`` (the enclave node),
    ``provision`` has ``provision-limit`` devices ``sgx-provision-<i>`` (the provision
    node) and, with ``dcap-infra-resources``, ``qe`` has ``qe-1`` and ``registration``
    has ``registration-1`` (both nodes; registration also :data:`EFIVARFS_CDI_SPEC`).
    A limit of 0 leaves its resource out. No topology: SGX is a CPU feature.
    """
    enclave = devfs_root / "sgx_enclave"
    provision = devfs_root / "sgx_provision"
    tree = DeviceTree()
    for node in (enclave, provision):
        try:
            os.stat(node)
        except OSError as err:
            if node == enclave and isinstance(err, FileNotFoundError):
                no_hardware(problems, f"no SGX on this node ({node} does not exist)", log)
                return tree
            add_problem(problems, f"SGX node {node}: {err.strerror}; no SGX resources", log)
            return tree
    enclave_info = DeviceInfo(state=HEALTHY, nodes=(device_spec(enclave, devfs_root),))
    for i in range(settings.enclave_limit):
        tree.add_device(ENCLAVE, f"sgx-enclave-{i}", enclave_info)
    provision_info = DeviceInfo(state=HEALTHY, nodes=(device_spec(provision, devfs_root),))
    for i in range(settings.provision_limit):
        tree.add_device(PROVISION, f"sgx-provision-{i}", provision_info)
    if settings.dcap_infra_resources:
        both = (device_spec(enclave, devfs_root), device_spec(provision, devfs_root))
        tree.add_device(QE, "qe-1", DeviceInfo(state=HEALTHY, nodes=both))
        tree.add_device(
            REGISTRATION,
            "registration-1",
            DeviceInfo(state=HEALTHY, nodes=both, cdi_spec=EFIVARFS_CDI_SPEC),
        )
    return tree


class SgxScanner(PeriodicScanner):
    """Checks the SGX nodes once (``scan-interval`` 0) or every ``scan-interval`` seconds.

    After the first scan, a scanner with interval 0 waits for :meth:`rescan` (the Go
    plugin blocks until it is stopped). Implements the framework's Scanner protocol
    only; Allocate is the default.
    """

    def __init__(
        self,
        settings: SgxSettings | None = None,
        *,
        devfs_root: Path | str = "/dev",
    ) -> None:
        self.settings = settings or SgxSettings()
        self.devfs_root = Path(devfs_root)
        super().__init__(interval=self.settings.scan_interval, logger=log, namespace=NAMESPACE)

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(self.settings, devfs_root=self.devfs_root, problems=problems)

    def device_types(self) -> list[str]:
        """Return ``enclave``, ``provision`` and, with ``dcap-infra-resources``, the DCAP types."""
        extra = [QE, REGISTRATION] if self.settings.dcap_infra_resources else []
        return [ENCLAVE, PROVISION, *extra]
