"""Registration with kubelet's plugin watcher as a DRA plugin.

kubelet (``pkg/kubelet/pluginmanager``) finds ``<driver>-reg.sock`` in its registry
directory, calls ``GetInfo`` and expects ``type: "DRAPlugin"``, the driver name, the
absolute path of the DRA socket as ``endpoint`` and the DRA services in
``supported_versions``, preferred first (kubelet 1.34+ takes the first it speaks);
then it reports the outcome with ``NotifyRegistrationStatus``.
"""

from __future__ import annotations

from host._pluginwatcher import DRA_PLUGIN_TYPE, RegistrationServicer
from host.dra._health import HEALTH_SERVICES

__all__ = ["SUPPORTED_VERSIONS", "dra_registration_servicer"]

SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin", *HEALTH_SERVICES)
"""The services on the DRA socket, in kubelet's short names, preferred first.

The order of k8s.io/dynamic-resource-allocation ``kubeletplugin``: the DRA services,
then the device health services (kubelet picks the first DRA service it speaks, and
``v1.DRAResourceHealth`` over ``v1alpha1`` when both are listed).
"""


def dra_registration_servicer(driver: str, endpoint: str) -> RegistrationServicer:
    """Return the Registration servicer of DRA driver ``driver`` served at ``endpoint``."""
    return RegistrationServicer(
        plugin_type=DRA_PLUGIN_TYPE,
        name=driver,
        endpoint=endpoint,
        supported_versions=SUPPORTED_VERSIONS,
    )
