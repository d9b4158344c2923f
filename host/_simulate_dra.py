"""``devplugin-host simulate --dra``: the DRA half, against a fake API server and DRA kubelet.

The ``--dra`` plugins are served as under ``run`` (:func:`host.dra.build_dra_plugins`),
but the API server is :class:`host.testing.FakeApiServer` (with the simulated Node)
and kubelet's DRA side is :class:`host.testing.FakeDraKubelet`, in the same event loop.
Once the slices are published and the drivers registered, ``--allocate DRIVER/TYPE=N``
does what the scheduler and kubelet do for a pod written for the device plugin
(``resources.limits: {DRIVER/TYPE: N}``) under KEP-5004
(:func:`host.testing.allocate_extended_resource`): the DeviceClass that ``devplugin-host
dra deviceclasses`` prints for DRIVER/TYPE is created, N matching untainted devices of
the published slices are allocated in the pod's extended-resource claim, kubelet
prepares it (NodePrepareResources) and each CDI device ID is resolved to its spec file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightkube

from host._loader import ScannerRecord
from host._simulate_output import Event
from host.dra import DraOptions, DraPlugin, build_dra_plugins, kube_client
from host.dra._deviceclasses import device_class_name
from host.testing import FakeApiServer, FakeDraKubelet, KubeletError, allocate_extended_resource

__all__ = ["SIMULATED_NODE", "DraSimulation"]

SIMULATED_NODE = "simulated-node"
"""The Node the simulated host runs on: the pool of every device."""
CLAIM_NAMESPACE = "default"


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class DraSimulation:
    """A fake API server and DRA kubelet, and the ``--dra`` plugins served against them."""

    def __init__(self, scanners: Sequence[ScannerRecord], workdir: Path, cdi_dir: Path) -> None:
        self.records = list(scanners)
        self.workdir = workdir
        self.cdi_dir = cdi_dir
        self.registry_dir = workdir / "dra-registry"
        self.api = FakeApiServer(nodes=[SIMULATED_NODE])
        self.kubelet = FakeDraKubelet(self.registry_dir)
        self.plugins: list[DraPlugin] = []
        self._client: lightkube.AsyncClient | None = None
        self._claims = 0

    @property
    def drivers(self) -> list[str]:
        """The driver names served (each ``--dra`` plugin's namespaces)."""
        return [record.namespace for record in self.records]

    async def start(self) -> list[tuple[str, DraPlugin]]:
        """Start the fakes; return the DRA plugins to serve beside the Managers."""
        await self.api.start()
        await self.kubelet.start()
        kubeconfig = self.api.write_kubeconfig(self.workdir / "kubeconfig")
        self._client = kube_client(kubeconfig)
        options = DraOptions(
            frozenset(record.plugin for record in self.records),
            SIMULATED_NODE,
            plugin_dir=self.workdir / "dra",
            registry_dir=self.registry_dir,
        )
        servers = build_dra_plugins(self.records, self._client, options, cdi_dir=self.cdi_dir)
        self.plugins = [plugin for _, plugin in servers]
        return servers

    async def stop(self) -> None:
        """Stop the fakes and close the client (after the DRA plugins have stopped)."""
        await self.kubelet.stop()
        if self._client is not None:
            await self._client.close()
        await self.api.stop()

    def where(self) -> dict[str, str]:
        """Return the fake API server's address, the node and the DRA registry directory."""
        return {
            "api_server": self.api.url,
            "node": SIMULATED_NODE,
            "dra_registry_dir": str(self.registry_dir),
        }

    def started_event(self) -> Event:
        """Return the event saying where the fakes are and which drivers are served."""
        where = self.where()
        message = (
            f"fake API server on {where['api_server']} (node {where['node']}), fake DRA "
            f"kubelet on {where['dra_registry_dir']}: DRA drivers {', '.join(self.drivers)}"
        )
        return Event("dra-started", message, data=where)

    def slice_events(self) -> list[Event]:
        """One event per driver: its slices, devices and tainted devices as published."""
        events = []
        for driver, published in self.slices().items():
            devices = published["devices"]
            tainted = sum(bool(device["taints"]) for device in devices)
            message = (
                f"{driver}: {published['slices']} ResourceSlice(s), {len(devices)} device(s), "
                f"{tainted} tainted"
            )
            events.append(Event("slices", message, data={"driver": driver, **published}))
        return events

    @staticmethod
    def prepared_event(result: dict[str, Any]) -> Event:
        """Return the event of a claim prepared by :meth:`allocate`."""
        ids = ", ".join(cdi["id"] for cdi in result["cdi"])
        message = (
            f"{result['resource']}: claim {result['claim']} prepared: "
            f"{', '.join(result['devices'])} (CDI {ids})"
        )
        return Event("prepared", message, data=result)

    def missing(self) -> list[str]:
        """Return what the simulation still waits for: published slices, registered drivers."""
        registered = self.kubelet.drivers
        missing = []
        for plugin in self.plugins:
            if not plugin.publisher.status.synced:
                missing.append(f"DRA driver {plugin.namespace} to publish its ResourceSlices")
            if plugin.namespace not in registered:
                missing.append(f"DRA driver {plugin.namespace} to register with kubelet")
        return missing

    def slices(self) -> dict[str, dict[str, Any]]:
        """Each driver's published slices: how many, and every device with its taints."""
        out = {}
        for driver in self.drivers:
            items = self.api.resource_slices(driver=driver, node_name=SIMULATED_NODE)
            devices = [
                {
                    "name": device["name"],
                    "type": device.get("attributes", {}).get("type", {}).get("string"),
                    "id": device.get("attributes", {}).get("id", {}).get("string"),
                    "taints": [
                        f"{taint['key']}:{taint['effect']}" for taint in device.get("taints") or ()
                    ],
                }
                for item in items
                for device in item["spec"].get("devices") or ()
            ]
            devices.sort(key=lambda device: _natural(device["name"]))
            out[driver] = {"slices": len(items), "devices": devices}
        return out

    def view(self) -> dict[str, dict[str, Any]]:
        """Return each driver's published slices, and its own view under ``driver``.

        The slices as :meth:`slices`; the view as ``/status`` shows it (registration,
        pool, devices, prepared claims, publisher).
        """
        from host._dra_status import dra_json

        drivers = dra_json(self.plugins, {})
        return {
            driver: published | ({"driver": drivers[driver]} if driver in drivers else {})
            for driver, published in self.slices().items()
        }

    def serves(self, resource: str) -> bool:
        """Whether ``resource`` (``DRIVER/TYPE``) belongs to a ``--dra`` plugin."""
        return resource.partition("/")[0] in self.drivers

    async def allocate(self, resource: str, count: int) -> dict[str, Any]:
        """Run a pod asking for ``count`` of ``resource``; prepare its claim, resolve CDI IDs.

        Returns the result as JSON data: ``pod``, ``device_class``, ``claim`` (the pod's
        extended-resource claim), ``request_mappings``, ``devices``, ``cdi``; ``error``
        says what failed (None: prepared).
        """
        driver, _, dev_type = resource.partition("/")
        self._claims += 1
        name = f"simulate-{self._claims}"
        result: dict[str, Any] = {
            "resource": resource,
            "requested": count,
            "driver": driver,
            "pod": f"{CLAIM_NAMESPACE}/{name}",
            "device_class": None,
            "claim": None,
            "devices": [],
            "cdi": [],
            "error": None,
        }
        try:
            await self._allocate(result, driver, dev_type, name, count)
        except KubeletError as exc:
            result["error"] = str(exc)
        return result

    async def _allocate(
        self, result: dict[str, Any], driver: str, dev_type: str, name: str, count: int
    ) -> None:
        pod, claim = await allocate_extended_resource(
            self.api,
            self.kubelet,
            f"{driver}/{dev_type}",
            count,
            node_name=SIMULATED_NODE,
            cdi_dir=self.cdi_dir,
            namespace=CLAIM_NAMESPACE,
            pod_name=name,
        )
        status = pod["status"]["extendedResourceClaimStatus"]
        result["claim"] = f"{CLAIM_NAMESPACE}/{claim.name}"
        result["device_class"] = device_class_name(driver, dev_type)
        result["request_mappings"] = status["requestMappings"]
        result["uid"] = claim.uid
        result["devices"] = list(claim.devices)
        for device in claim.prepared:
            for cdi_id in device.cdi_device_ids:
                edits = claim.edits[cdi_id]
                result["cdi"].append(
                    {
                        "device": device.device,
                        "id": cdi_id,
                        "spec_file": str(claim.spec_files[cdi_id]),
                        "device_nodes": [node.get("path") for node in edits.get("deviceNodes", ())],
                        "env": list(edits.get("env", ())),
                    }
                )
