"""Built-in plugin ``sgx``: Intel SGX enclave and provisioning nodes as ``sgx.intel.com`` resources.

The Python counterpart of Intel's ``sgx_plugin``. Options are set with
``--set sgx.KEY=VALUE``; ``devplugin-host plugins`` lists them.

What it reads
=============
Only whether ``<devfs>/sgx_enclave`` and ``<devfs>/sgx_provision`` exist. With both:

``sgx.intel.com/enclave``
    ``enclave-limit`` devices ``sgx-enclave-0`` ..., each the node ``sgx_enclave``.
``sgx.intel.com/provision``
    ``provision-limit`` devices ``sgx-provision-0`` ..., each the node ``sgx_provision``.
``sgx.intel.com/qe`` and ``sgx.intel.com/registration`` (with ``dcap-infra-resources``)
    One device each (``qe-1``, ``registration-1``) with both nodes, for the DCAP
    quoting enclave and registration agent; ``registration`` also gets the CDI
    device ``intel.cdi.k8s.io/sgx=efivarfs``, an efivarfs mounted at ``/run/efivars``.

All devices are Healthy and have no NUMA topology. Without both nodes nothing is
exposed (one warning, no error).

Options
=======
``enclave-limit``, ``provision-limit`` (default ``PODS_PER_CORE`` x CPUs, else 110)
    How many containers may use each node at once; 0 leaves the resource out. The
    default is read from the environment variable ``PODS_PER_CORE`` (kubelet's
    ``--pods-per-core``) times the CPUs the host may use; unset, 0 or not an
    integer, it is 110 (kubelet's default ``--max-pods``).
``dcap-infra-resources`` (default false)
    Also expose ``qe`` and ``registration``.
``scan-interval`` (default 0)
    0: check for the nodes once at start, as the Go plugin does. A number of seconds
    checks again at that interval, so nodes that appear later (the driver loaded
    after the host started) are picked up without a restart.

Departures from the Go plugin
=============================
* ``PODS_PER_CORE=0`` means 110, as kubelet reads ``--pods-per-core=0`` ("no per-core
  limit"); Go exposed 0 devices.
* ``scan-interval`` is new (Go always scans once).
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.sgx._options import DEFAULT_POD_COUNT, SgxSettings, default_pod_count, options
from hostplugins.sgx._scanner import (
    CDI_KIND,
    EFIVARFS_CDI_SPEC,
    ENCLAVE,
    NAMESPACE,
    PROVISION,
    QE,
    REGISTRATION,
    SgxScanner,
    scan_once,
)

__all__ = [
    "CDI_KIND",
    "DEFAULT_POD_COUNT",
    "EFIVARFS_CDI_SPEC",
    "ENCLAVE",
    "NAMESPACE",
    "PROVISION",
    "QE",
    "REGISTRATION",
    "SgxScanner",
    "SgxSettings",
    "default_pod_count",
    "devplugin_options",
    "devplugin_scanners",
    "scan_once",
]


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the SGX plugin's options (the limits' default reads ``PODS_PER_CORE`` now)."""
    return list(options())


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, SgxScanner]]:
    """Register one SGX scanner under ``sgx.intel.com``; invalid options raise ConfigError."""
    settings = SgxSettings.from_options(config.options)
    return [(NAMESPACE, SgxScanner(settings, devfs_root=config.devfs_root))]
