"""One plugin namespace served as a DRA driver: scanner feed, ResourceSlices, kubelet plugin.

:class:`DraPlugin` is what ``devplugin-host run --dra PLUGIN`` serves for each
namespace of the plugin, beside the device-plugin Managers of the other plugins::

    scanner --notify--> ScannerFeed --snapshot--+--> ResourceSlicePublisher (API server)
                                                +--> DraDriver (kubelet)

A resource is backed by one API or the other, never both (KEP-5004): a namespace
served here has no device-plugin Manager. With an instance id (rolling update) the
publisher starts once the DRA socket listens, naming this instance the one that
publishes (:mod:`host.dra._handover`): the older instance then stands by.
:func:`build_dra_plugins` makes one :class:`DraPlugin` per scanner record, all sharing
the host's Kubernetes client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightkube

from host.deviceplugin._cdi import DEFAULT_CDI_DIR
from host.deviceplugin._feed import ScannerFeed, Snapshot
from host.deviceplugin._guard import PluginCaller
from host.deviceplugin._observer import LOG_FIELDS
from host.deviceplugin._podresources import pod_resources
from host.deviceplugin._types import Scanner
from host.dra._claimclient import KubeClaimSource
from host.dra._consumers import ClaimConsumers
from host.dra._driver import DraDriver
from host.dra._handover import PublisherHandover
from host.dra._publisher import ResourceSlicePublisher
from host.dra._sockets import DEFAULT_DRA_PLUGIN_DIR, DEFAULT_REGISTRY_DIR

if TYPE_CHECKING:
    from host._loader import ScannerRecord

__all__ = ["PUBLISH_GRACE", "DraOptions", "DraPlugin", "build_dra_plugins"]

log = logging.getLogger("host.dra")

PUBLISH_GRACE = 60.0
"""Seconds publishing may keep failing after a first success before the driver is not ready."""
RELIST_AFTER_REGISTRATION = (0.0, 5.0)
"""Seconds after each registration with kubelet at which the slices are re-listed.

kubelet deletes the node's ResourceSlices when it starts (``NewDRAPluginManager``: no
driver is usable until it registers again), in the background while its plugin
watcher registers the drivers again: re-listing at once repairs a wipe that came
first, and once more a little later one that came after, instead of waiting for the
periodic re-list (30 s) with the node's devices unpublished meanwhile.
"""


@dataclass(frozen=True)
class DraOptions:
    """How the host serves its DRA plugins (``--dra`` and the options beside it)."""

    plugins: frozenset[str]
    """The plugins served as DRA drivers instead of device plugins."""
    node_name: str
    """This node's name: the pool of every device, the owner of every slice."""
    kubeconfig: Path | None = None
    """None: the in-cluster service account (then ``$KUBECONFIG``, ``~/.kube/config``)."""
    plugin_dir: Path = Path(DEFAULT_DRA_PLUGIN_DIR)
    """Kubelet's DRA plugin directory: ``<dir>/<driver>/dra.sock`` and the checkpoint."""
    registry_dir: Path = Path(DEFAULT_REGISTRY_DIR)
    """Kubelet's plugin watcher directory (registration sockets)."""
    cleanup_on_exit: bool = False
    """Delete the node's slices on stop (default: they stay for the next instance)."""
    publish_grace: float = PUBLISH_GRACE
    """Seconds of failed publishing (after a first success) before readiness turns false."""


class DraPlugin:
    """Serves one plugin namespace as DRA driver ``namespace``: slices and kubelet plugin.

    One :class:`~host.deviceplugin._feed.ScannerFeed` runs the scanner and feeds each
    snapshot to a :class:`ResourceSlicePublisher` and a :class:`DraDriver`. Run
    :meth:`serve` as a task (as a Manager's); cancelling it stops the scanner, the
    sockets and the publisher (slices deleted only with ``cleanup_on_exit``).
    """

    def __init__(
        self,
        plugin: str,
        namespace: str,
        scanner: Scanner,
        client: lightkube.AsyncClient,
        *,
        node_name: str,
        plugin_dir: str | Path = DEFAULT_DRA_PLUGIN_DIR,
        registry_dir: str | Path = DEFAULT_REGISTRY_DIR,
        cdi_dir: str | Path = DEFAULT_CDI_DIR,
        instance_id: str | None = None,
        cleanup_on_exit: bool = False,
        scan_backoff: tuple[float, float] = (1.0, 60.0),
        publish_grace: float = PUBLISH_GRACE,
    ) -> None:
        self.plugin = plugin
        self.namespace = namespace
        self.cleanup_on_exit = cleanup_on_exit
        self.publish_grace = publish_grace
        """Seconds publishing may fail, after a success, before the driver is not ready."""
        self.caller = PluginCaller(plugin)
        self.consumers = ClaimConsumers(KubeClaimSource(client))
        """The claims' ``status.reservedFor`` as last fetched (status pages)."""
        self.driver = DraDriver(
            namespace,
            node_name,
            scanner,
            self.consumers,
            plugin_dir=plugin_dir,
            registry_dir=registry_dir,
            cdi_dir=cdi_dir,
            instance_id=instance_id,
            caller=self.caller,
            # The plugin's CDI specs are collected when kubelet says nobody holds them.
            cdi_in_use=pod_resources().devices_in_use,
        )
        self.consumers.prepared = lambda: self.driver.prepared_claims
        self.publisher = ResourceSlicePublisher(namespace, node_name, client)
        self.publisher.on_published = self._published
        self.handover: PublisherHandover | None = None
        """With an instance id: who of this driver's instances publishes the slices."""
        if instance_id:
            handover = PublisherHandover(self.driver.data_dir, instance_id, self.driver.socket_path)
            self.publisher.may_write = lambda: asyncio.to_thread(handover.may_publish)
            self.handover = handover
        self._published_once = False
        self.feed = ScannerFeed(plugin, namespace, scanner, backoff=scan_backoff)
        self.feed.subscribe(self.publisher.update)
        self.feed.subscribe(self._feed_driver)

    def __repr__(self) -> str:
        return f"DraPlugin({self.plugin!r}, {self.namespace!r})"

    def _published(self) -> None:
        self._published_once = True

    def _feed_driver(self, snapshot: Snapshot, scan_failed: bool) -> None:
        self.driver.update(snapshot, scan_failed, scan_error=self.feed.scan_error)

    @property
    def not_ready_reason(self) -> str | None:
        """Why this driver is not ready (None once it is): sockets, kubelet, slices.

        Ready: both sockets up, kubelet accepted the registration, and the slices were
        published at least once (or another instance publishes them: rolling update)
        and have not kept failing for longer than :attr:`publish_grace` since (a
        retried conflict or a short outage does not flap readiness).
        """
        if not self.driver.serving:
            return "DRA driver sockets not up yet"
        registered = self.driver.registration.registered
        if registered is None:
            return "not registered with kubelet yet"
        if not registered:
            return f"kubelet refused the registration: {self.driver.registration.error}"
        status = self.publisher.status
        if not self._published_once and not status.standby:
            if status.failures:
                return (
                    f"ResourceSlices not published yet: {status.failures} failed attempt(s), "
                    f"last: {status.last_error}"
                )
            return "ResourceSlices not published yet"
        if status.failing_since is not None:
            failing = time.time() - status.failing_since
            if failing >= self.publish_grace:
                return (
                    f"publishing ResourceSlices has failed for {failing:.0f} s "
                    f"({status.failures} attempt(s)), last: {status.last_error}"
                )
        return None

    async def serve(self) -> None:
        """Scan, publish and serve kubelet until cancelled; then stop everything cleanly."""
        LOG_FIELDS.set({**LOG_FIELDS.get(), "plugin": self.plugin})
        if self.handover is None:
            await self.publisher.start()
            publishing = None
        else:
            publishing = asyncio.create_task(
                self._take_over(self.handover), name=f"take over {self.namespace}"
            )
        feed = asyncio.create_task(self.feed.run(), name=f"feed {self.namespace}")
        relist = asyncio.create_task(
            self._relist_after_registrations(), name=f"relist {self.namespace}"
        )
        try:
            await self.driver.serve()
        finally:
            for task in (feed, publishing, relist):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.publisher.stop(cleanup=self.cleanup_on_exit)
            self.caller.close()
            log.info(
                "plugin %r: DRA driver %s stopped (ResourceSlices %s)",
                self.plugin,
                self.namespace,
                "deleted" if self.cleanup_on_exit else "kept",
            )

    async def _take_over(self, handover: PublisherHandover) -> None:
        """Once the DRA socket listens, name this instance the publisher and publish."""
        await self.driver.wait_serving()
        try:
            await asyncio.to_thread(handover.claim)
        except OSError as err:
            log.warning(
                "DRA driver %s: cannot take over publishing from an older instance: %s",
                self.namespace,
                err,
            )
        await self.publisher.start()

    async def _relist_after_registrations(self) -> None:
        """Re-list the slices after every registration kubelet accepts (see above)."""
        registration = self.driver.registration
        seen = registration.status_count
        later: asyncio.Task[None] | None = None
        try:
            while True:
                registered = await registration.wait_for_status(after=seen)
                seen = registration.status_count
                if not registered:
                    continue
                self.publisher.request_resync()
                if later is not None:
                    later.cancel()
                later = asyncio.create_task(self._relist_later())
        finally:
            if later is not None:
                later.cancel()

    async def _relist_later(self) -> None:
        for delay in RELIST_AFTER_REGISTRATION[1:]:
            await asyncio.sleep(delay)
            self.publisher.request_resync()


def build_dra_plugins(
    scanners: Sequence[ScannerRecord],
    client: lightkube.AsyncClient,
    options: DraOptions,
    *,
    cdi_dir: str | Path = DEFAULT_CDI_DIR,
    instance_id: str | None = None,
) -> list[tuple[str, DraPlugin]]:
    """One :class:`DraPlugin` per record, labelled ``plugin P DRA driver NS``.

    A record that cannot be served (a namespace that is no driver name, a socket path
    too long) is logged with its plugin and left out; the others are served.
    """
    served: list[tuple[str, DraPlugin]] = []
    for record in scanners:
        label = f"plugin {record.plugin!r} DRA driver {record.namespace}"
        try:
            plugin = DraPlugin(
                record.plugin,
                record.namespace,
                record.scanner,
                client,
                node_name=options.node_name,
                plugin_dir=options.plugin_dir,
                registry_dir=options.registry_dir,
                cdi_dir=cdi_dir,
                instance_id=instance_id,
                cleanup_on_exit=options.cleanup_on_exit,
                publish_grace=options.publish_grace,
            )
        except ValueError as exc:
            log.error("%s cannot be served: %s; the other plugins go on", label, exc)
            continue
        served.append((label, plugin))
    return served
