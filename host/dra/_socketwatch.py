"""Keeps a DRA driver's two sockets in place while it serves.

kubelet finds a driver only through its registration socket, and reaches it only
through its DRA socket: if either file goes (a cleaned ``plugins_registry``, a
re-created ``/var/lib/kubelet``), the driver is unreachable although it runs. One
inotify watch on the registry directory (the device-plugin side's
:class:`~host.deviceplugin.PluginDirWatcher`, with its 5 s safety-net check that also
covers the DRA socket) notices; the socket is then served again, the DRA socket first,
and the registration socket re-created, so kubelet's plugin watcher registers the
driver anew.
"""

from __future__ import annotations

import asyncio
import logging

from host.deviceplugin._endpoint import SocketInUseError
from host.deviceplugin._watcher import PluginDirWatcher
from host.dra._kubelet import UnixSocketServer

__all__ = ["SOCKET_CHECK_INTERVAL", "keep_sockets"]

log = logging.getLogger("host.dra")

SOCKET_CHECK_INTERVAL = 5.0
"""Seconds between two checks of the sockets when no inotify event came."""


async def keep_sockets(
    driver: str,
    dra: UnixSocketServer,
    registrar: UnixSocketServer,
    *,
    interval: float = SOCKET_CHECK_INTERVAL,
) -> None:
    """Serve ``dra`` and ``registrar`` again whenever their socket file goes; until cancelled.

    Both servers must be started. A socket that cannot be served again (another
    process serves that path now, a directory that cannot be made) is logged and
    tried again at the next check.
    """
    check = asyncio.Event()
    watcher = PluginDirWatcher(registrar.path.parent, safety_interval=interval)
    unsubscribe = watcher.subscribe(lambda _event: check.set())
    try:
        while True:
            await check.wait()
            check.clear()
            await _restore(driver, dra, registrar)
    finally:
        unsubscribe()


async def _restore(driver: str, dra: UnixSocketServer, registrar: UnixSocketServer) -> None:
    try:
        if not dra.serving:
            log.warning("DRA driver %s: socket %s went away; serving it again", driver, dra.path)
            await dra.start()
            await registrar.start()  # kubelet must register the endpoint anew
        elif not registrar.serving:
            log.warning(
                "DRA driver %s: registration socket %s went away; registering again",
                driver,
                registrar.path,
            )
            await registrar.start()
        else:
            return
    except (SocketInUseError, OSError) as exc:
        log.error(
            "DRA driver %s: cannot serve its sockets again (%s); trying again at the next check",
            driver,
            exc,
        )
        return
    log.info(
        "DRA driver %s: serving %s again, registered through %s", driver, dra.path, registrar.path
    )
