"""Collecting the CDI spec files of a DRA driver that nothing holds any more.

Two kinds of files, two rules:

* **Per-claim specs** (``<driver>/dra=claim-<claim uid>-...``) live and die with their
  claim: NodeUnprepareResources removes them. A host killed after writing a claim's
  spec but before recording the claim leaves one that no recorded claim names; such a
  claim was never answered as prepared (the answer waits for the checkpoint), so kubelet
  never handed its CDI IDs to a container. At start, after a clean read of the
  checkpoint, :func:`stale_claim_specs` removes every per-claim spec of the driver that
  the checkpoint does not name. (A checkpoint moved aside as unreadable leaves them:
  which claims kubelet holds is then unknown.)
* **The plugin's own specs** (``DeviceInfo.cdi_spec``) are recorded in the namespace's
  CDI ledger, as the device-plugin side records its own. They may be handed out by
  device-plugin allocations too (another instance of the host, containers started
  before the plugin became a DRA driver), so they follow the device-plugin rule
  (:mod:`host.deviceplugin._cdi_store`): :class:`PluginSpecCollector` removes a ledger
  file once no recorded claim names it and kubelet's PodResources API says no running
  container holds it (neither a device of its ledger entry nor its CDI name), seen so
  in two passes at least a check interval apart; "unknown" collects nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from host.deviceplugin._cdi import CdiSpecWriter
from host.deviceplugin._cdi_store import InUse, devices_in_use_now
from host.dra._prepare import CDI_CLASS

if TYPE_CHECKING:
    from host.dra._store import ClaimStore

__all__ = ["PluginSpecCollector", "stale_claim_specs"]

log = logging.getLogger("host.dra.cdi")


def stale_claim_specs(writer: CdiSpecWriter, driver: str, named: set[str]) -> list[Path]:
    """Remove the per-claim spec files of ``driver`` whose CDI name is not in ``named``.

    Blocking. Only regular files of kind ``<driver>/dra`` with a device ``claim-...``
    are touched; returns the removed paths.
    """
    # spec_file_name doubles every "-" inside a part and joins the parts with "-".
    prefix = f"{driver.replace('-', '--')}-{CDI_CLASS}-claim--"
    kind = f"{driver}/{CDI_CLASS}"
    removed = []
    try:
        entries = list(os.scandir(writer.cdi_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.name.endswith(".json"):
            continue
        path = Path(entry.path)
        with writer.file_lock(entry.name):
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                spec = json.loads(path.read_bytes())
                name = spec["devices"][0]["name"]
                if spec["kind"] != kind or not name.startswith("claim-"):
                    continue
                if f"{kind}={name}" in named:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
                log.warning("DRA driver %s: cannot check CDI spec %s: %s", driver, path, err)
                continue
        removed.append(path)
    return removed


class PluginSpecCollector:
    """Removes the plugin CDI specs of a DRA driver that nothing holds (module docs)."""

    def __init__(self, store: ClaimStore, in_use: InUse | None, interval: float = 60.0) -> None:
        self.store = store
        self.in_use = in_use
        self.interval = interval
        self._suspects: set[str] = set()

    async def collect(self) -> list[Path]:
        """One pass: remove the ledger files found unused now and at the pass before."""
        used = await devices_in_use_now(self.in_use)
        if used is None:
            return []
        store = self.store
        ledger = await asyncio.to_thread(store.writer.ledger_read)
        held = store.plugin_spec_files()
        unused = {
            file_name
            for file_name, entry in ledger.items()
            if file_name not in held
            and not entry.devices & used.device_ids
            and entry.name not in used.cdi_names
        }
        doomed, self._suspects = unused & self._suspects, unused - self._suspects
        if not doomed:
            return []
        removed = await asyncio.to_thread(store.collect_plugin_specs, doomed)
        for path in removed:
            log.info(
                "DRA driver %s: removed CDI spec %s: no claim and no running container holds it",
                store.driver,
                path,
            )
        return removed

    async def run(self) -> None:
        """Collect every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.collect()
            except OSError as err:
                log.warning("DRA driver %s: CDI spec collection failed: %s", self.store.driver, err)
