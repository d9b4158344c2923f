"""Built-in plugin ``generic``: expose any ``/dev`` nodes to containers by configuration.

Like squat/generic-device-plugin and KubeVirt's kvm/tun/vhost-net plugins, without a Go
daemon: ``/dev/kvm``, ``/dev/fuse``, ``/dev/net/tun``, serial ports, USB devices.

Options
=======
``devices``
    A list of device groups (below). In the config file, a TOML array of tables::

        [[plugins.generic.devices]]
        name = "serial"
        paths = ["/dev/ttyUSB*", "/dev/ttyACM*"]

        [[plugins.generic.devices]]
        name = "kvm"
        paths = ["/dev/kvm"]
        count = 110

    or ``[plugins.generic] devices = [{name = "kvm", paths = ["/dev/kvm"]}]``. On the
    command line, the same list as a JSON string::

        --set 'generic.devices=[{"name": "serial", "paths": ["/dev/ttyUSB*"]}]'

    Unset, the built-in default serves ``kvm`` (/dev/kvm), ``fuse`` (/dev/fuse),
    ``tun`` (/dev/net/tun), ``vhost-net`` (/dev/vhost-net) and ``vsock``
    (/dev/vhost-vsock), each only when its node exists, each shared by up to 110
    containers (KubeVirt's practice: one per pod the kubelet runs by default).
    Setting ``devices`` replaces that default; ``devices = []`` serves nothing.
``namespace`` (default ``devices.devplugin.io``)
    The domain of every group's resource name ``<namespace>/<name>``.
``rescan-interval`` (default 5 seconds)
    How often the globs and USB matchers are evaluated again (hot-plug).

A device group
==============
``name`` (required)
    The resource name part: a group ``kvm`` is the resource ``devices.devplugin.io/kvm``.
``namespace``
    This group's own namespace instead of the ``namespace`` option. Groups in another
    namespace are served by a scanner of their own, registered with that namespace.
``paths``
    One or more globs (Python ``glob`` syntax, one string or a list) of device nodes
    under the devfs root (``--devfs-root``), written ``/dev/...`` or relative to
    ``/dev``. A node's container path is its path relative to the devfs root under
    ``/dev``: with ``--devfs-root /host/dev``, ``/host/dev/ttyUSB0`` is ``/dev/ttyUSB0``
    in the container.
``usb``
    USB matchers, ``[{vendor = "0x1234", product = "0x5678"}]``: each USB device in
    ``<sysfs>/bus/usb/devices/*`` whose ``idVendor`` (and ``idProduct``, when given)
    match is exposed as its node ``/dev/bus/usb/BBB/DDD`` (``busnum``/``devnum``).
    IDs are hexadecimal strings (``"0x1234"`` or ``"1234"``) or integers (TOML
    ``0x1234``). A group needs ``paths``, ``usb`` or both.
``count`` (default 1)
    How many containers may share each device at once.
``permissions`` (default ``"rw"``)
    The cgroup device permissions containers get: a combination of ``r``, ``w``, ``m``.
``mounts``
    Host paths mounted into every container that gets a device of the group:
    ``[{host-path = "/lib/firmware", container-path = "/lib/firmware", read-only = true}]``
    (``container-path`` defaults to ``host-path``, ``read-only`` to false).
``bundle`` (default false)
    False: every matched node is a device of its own. True: all nodes the group
    matches form one device (present while at least one node exists), for software
    that needs several nodes together.

Device IDs
==========
A node's ID is its path relative to the devfs root with ``/`` replaced by ``_``
(``/dev/ttyUSB0`` → ``ttyUSB0``, ``/dev/net/tun`` → ``net_tun``, a USB device →
``bus_usb_001_004``); a bundled group's device has the group's name as its ID. With
``count = 1`` that is the device ID; with ``count = N`` > 1 the device is advertised
``N`` times as ``<id>-0`` … ``<id>-<N-1>`` (``kvm-0`` … ``kvm-109``). IDs are stable
across rescans and restarts while the node keeps its path.

Hot-plug and health
===================
Every ``rescan-interval`` the globs and USB matchers run again: a node that vanished
disappears from the resource, a new one appears (kubelet is notified only on a change).
A node that exists but is not a character or block device, or that this process may
not open with the group's permissions (``access(2)``; nodes are never opened, see
``GenericScanner``), is advertised Unhealthy: kubelet counts it but allocates it to
no one, until a rescan finds it usable again. Changes are logged with the reason.
NUMA topology is read from sysfs for each node.

Configuration errors
====================
* An option that cannot be read at all (``devices`` not JSON or not a list, an
  invalid ``namespace``, a ``rescan-interval`` that is not a positive number) is a
  configuration error: the host prints it and exits with status 2, serving nothing.
* A mistake in one device group (no globs, an invalid resource name, ``count`` < 1,
  bad ``permissions``, a bad USB ID, an unknown key, a name used by an earlier group)
  is logged as an error naming the group and every problem in it; that group is
  skipped and all the other groups still serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from host import Option, PluginConfig, hookimpl
from hostplugins.generic._config import (
    DEFAULT_DEVICES,
    DEFAULT_NAMESPACE,
    DEFAULT_RESCAN_INTERVAL,
    DeviceGroup,
    GenericConfigError,
    MountSpec,
    UsbMatch,
    default_devices,
    load_groups,
    parse_devices,
    parse_namespace,
    parse_rescan_interval,
)
from hostplugins.generic._scanner import GenericScanner

__all__ = [
    "DeviceGroup",
    "GenericConfigError",
    "GenericScanner",
    "MountSpec",
    "UsbMatch",
    "devplugin_options",
    "devplugin_scanners",
    "load_groups",
]

log = logging.getLogger("hostplugins.generic")

T = TypeVar("T")


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare ``devices``, ``namespace`` and ``rescan-interval``."""
    return [
        Option(
            "devices",
            default=default_devices(),
            type=parse_devices,
            help=(
                "device groups: a TOML array of tables, or a JSON array with --set, e.g. "
                '[{"name": "serial", "paths": ["/dev/ttyUSB*"], "count": 1}]; keys: name, '
                "paths, usb, count, permissions, mounts, namespace, bundle; "
                "default: kvm, fuse, tun, vhost-net, vsock (each only if present)"
            ),
        ),
        Option(
            "namespace",
            default=DEFAULT_NAMESPACE,
            type=parse_namespace,
            help="resource namespace of groups without their own: <namespace>/<name>",
        ),
        Option(
            "rescan-interval",
            default=DEFAULT_RESCAN_INTERVAL,
            type=parse_rescan_interval,
            help="seconds between two evaluations of the globs (hot-plug)",
        ),
    ]


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, GenericScanner]]:
    """One scanner per namespace used by the valid device groups; bad groups are logged.

    Returns a list rather than yielding, so a :class:`GenericConfigError` surfaces when
    the hook is called. Options are parsed again here (parsing is idempotent), so raw
    values the host did not run through ``Option.type`` are checked just the same.
    """
    entries = _option(config, "devices", parse_devices, DEFAULT_DEVICES)
    namespace = _option(config, "namespace", parse_namespace, DEFAULT_NAMESPACE)
    interval = _option(config, "rescan-interval", parse_rescan_interval, DEFAULT_RESCAN_INTERVAL)
    groups, errors = load_groups(entries, namespace=namespace)
    for error in errors:
        log.error("%s", error)
    if not groups:
        (log.warning if errors else log.info)(
            "plugin 'generic': no valid device groups configured; nothing to serve"
        )
    by_namespace: dict[str, list[DeviceGroup]] = {}
    for group in groups:
        by_namespace.setdefault(group.namespace, []).append(group)
    return [
        (
            ns,
            GenericScanner(
                members,
                devfs_root=config.devfs_root,
                sysfs_root=config.sysfs_root,
                rescan_interval=interval,
            ),
        )
        for ns, members in by_namespace.items()
    ]


def _option(config: PluginConfig, name: str, parse: Callable[[object], T], default: object) -> T:
    """Parse option ``name`` (its default when unset) once more: parsing is idempotent."""
    return parse(config.options.get(name, default))
