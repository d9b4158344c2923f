"""The socket files a host listens on: taking a path over safely, and linked sockets.

Kubelet (device-plugin registration through ``kubelet.sock``) unlinks every socket in
its directory when it starts (devicemanager ``plugin/v1beta1/server.go``,
``cleanupPluginDirectory``): its way of telling plugins to register again. A socket's
name can be given back without a new server: a server that listens on a *private*
path (a sub-directory kubelet's cleanup passes over, as it skips directories) and is
reachable at the public path through a hard link to that private socket needs only
the link re-made, one ``link`` call, where a new gRPC server costs about a millisecond
of CPU per resource. Connecting resolves the path to the socket's inode, so either
name reaches the same listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc

from host._cancellation import cancel_requests, raise_lost_cancellation
from host.deviceplugin._watcher import SocketIdentity, socket_identity

__all__ = [
    "MAX_SOCKET_PATH",
    "PRIVATE_DIR",
    "SocketBindError",
    "SocketInUseError",
    "UnixSocketServer",
    "claim_socket_path",
    "link_socket",
    "private_socket_path",
    "remove_stale_private_sockets",
    "socket_is_live",
]

log = logging.getLogger("host.deviceplugin.endpoint")

MAX_SOCKET_PATH = 107
"""The longest Unix socket path in bytes: ``sun_path`` holds 108 with the final NUL."""
PRIVATE_DIR = ".devplugin-host"
"""Sub-directory of the plugin directory where linked sockets listen.

Kubelet's start-up cleanup removes sockets only, never directories or what is in them,
and does not look into sub-directories of the device-plugin directory.
"""


class SocketInUseError(RuntimeError):
    """The socket path is served by another live process (or is not a socket at all)."""


class SocketBindError(RuntimeError):
    """The socket cannot be created: path too long, no permission, no directory, ..."""


async def socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(1.0):
            await loop.sock_connect(sock, str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a listener with a full backlog is still somebody's listener
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    else:
        return True
    finally:
        sock.close()


async def claim_socket_path(path: Path) -> None:
    """Make ``path`` free for a socket of ours: remove a dead socket, refuse anything else.

    Raises :class:`SocketInUseError` when ``path`` is not a socket (never replaced) or a
    live process accepts connections on it (never taken over).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUseError(
            f"{path} exists and is not a socket; refusing to replace it "
            "(remove it or choose another plugin directory)"
        )
    if await socket_is_live(path):
        raise SocketInUseError(
            f"socket {path} is already in use by another process; not taking it over"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def private_socket_path(public: Path) -> Path | None:
    """Where a server reachable at ``public`` listens; None when that path is too long."""
    private = public.parent / PRIVATE_DIR / public.name
    if len(os.fsencode(private)) > MAX_SOCKET_PATH:
        return None
    return private


async def link_socket(listening: SocketIdentity, private: Path, public: Path) -> bool:
    """Make ``public`` a hard link to the listening socket at ``private``.

    False when ``private`` is no longer that socket (the server must be served anew).
    Raises :class:`SocketInUseError` when another live socket holds ``public``.
    """
    if socket_identity(private) != listening:
        return False
    if socket_identity(public) == listening:
        return True
    await claim_socket_path(public)
    try:
        os.link(private, public)
    except FileExistsError:
        # Someone put a file there since we looked: theirs, not ours to remove.
        raise SocketInUseError(
            f"socket {public} was created by another process meanwhile; not taking it over"
        ) from None
    return socket_identity(public) == listening


async def remove_stale_private_sockets(directory: Path, keep: set[str]) -> int:
    """Remove the sockets in ``directory`` nobody listens on, except the names in ``keep``.

    A host that was killed leaves its private sockets behind (the public links are
    removed by the next kubelet start, the private names stay): with an instance id in
    every name, they would pile up one set per pod. Another instance's live sockets
    (a rolling update's other pod) accept connections and are left alone.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name in keep:
            continue
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                continue
            if await socket_is_live(Path(entry.path)):
                continue
            os.unlink(entry.path)
            removed += 1
    if removed:
        log.info("removed %d stale socket(s) from %s", removed, directory)
    return removed


class UnixSocketServer:
    """A grpc.aio server on one Unix socket that it creates and, at stop, removes.

    :meth:`start` removes a stale file at the path first (a socket nobody listens
    on) and refuses to touch a live socket or a file that is not a socket. :meth:`stop`
    removes the socket only if it is still the one this server created, after calls in
    flight had ``stop_grace`` seconds to finish; ``end_streams`` is called first, to end
    the streams that never finish by themselves (a restart included).

    With ``link``, the server listens on :func:`private_socket_path` and the path is a
    hard link to it, so that :meth:`restore` gives an unlinked path back without a new
    server (where the private path is too long or cannot be made: as without ``link``).
    """

    STOP_GRACE = 0.2
    _swept: ClassVar[set[str]] = set()
    """Private socket directories this process has cleared of stale sockets."""

    def __init__(
        self,
        path: Path,
        add_servicers: Callable[[grpc.aio.Server], None],
        *,
        stop_grace: float = STOP_GRACE,
        end_streams: Callable[[], None] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        link: bool = False,
    ) -> None:
        self.path = path
        self.stop_grace = stop_grace
        self._end_streams = end_streams
        self._add_servicers = add_servicers
        self._options = (*options, ("grpc.so_reuseport", 0))
        self._link = link
        self._server: grpc.aio.Server | None = None
        self._identity: SocketIdentity | None = None
        self._private: Path | None = None

    @property
    def running(self) -> bool:
        """Whether the server runs (its socket may have been unlinked since)."""
        return self._server is not None

    @property
    def serving(self) -> bool:
        """Whether the server runs and its socket file is still in place."""
        return self._server is not None and socket_identity(self.path) == self._identity

    async def restore(self) -> None:
        """Give the socket its name back (one hard link) or, failing that, :meth:`start`."""
        if self._server is not None and self._private is not None and self._identity:
            try:
                if await link_socket(self._identity, self._private, self.path):
                    return
            except OSError as exc:
                log.debug("cannot re-link %s: %s", self.path, exc)
        await self.start()

    async def start(self) -> None:
        """Listen on the socket (anew); SocketInUseError when another process serves it."""
        await self.stop()
        path = self.path
        length = len(os.fsencode(path))
        if length > MAX_SOCKET_PATH:
            raise SocketBindError(
                f"socket path {path} is {length} bytes long; Unix sockets allow at most "
                f"{MAX_SOCKET_PATH}: shorten the directory, namespace or device type"
            )
        await claim_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        private = await self._private_path() if self._link else None
        listen = private or path
        server = grpc.aio.server(options=self._options)
        self._add_servicers(server)
        try:
            if server.add_insecure_port(f"unix:{listen}") == 0:  # older grpcio: 0, no raise
                raise RuntimeError(f"Failed to bind to address unix:{listen}")
        except RuntimeError as exc:
            await server.stop(None)
            raise SocketBindError(f"cannot create socket {listen} (will retry): {exc}") from None
        try:
            await server.start()
            identity = socket_identity(listen)
            if private is not None and (
                identity is None or not await link_socket(identity, private, path)
            ):
                raise SocketBindError(f"cannot link {path} to {private} (will retry)")
        except BaseException:
            await server.stop(None)  # never leave running a server nobody can reach
            raise
        self._server, self._private, self._identity = server, private, identity
        log.debug("serving on %s", path)

    async def _private_path(self) -> Path | None:
        """Return the path to listen on behind a hard link, or None to listen on :attr:`path`.

        A stale socket found there (a killed host's) is removed first, and the first
        server of this process in a directory sweeps that directory. Any failure (no
        hard links on this filesystem, no permission) means listening directly.
        """
        private = private_socket_path(self.path)
        if private is None:
            return None
        try:
            private.parent.mkdir(exist_ok=True, mode=0o750)
            await claim_socket_path(private)
            if str(private.parent) not in UnixSocketServer._swept:
                UnixSocketServer._swept.add(str(private.parent))
                await remove_stale_private_sockets(private.parent, {private.name})
        except OSError as exc:
            self._link = False
            log.info("serving %s directly (no private socket path: %s)", self.path, exc)
            return None
        return private

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving and remove the socket if it is still ours."""
        server, self._server = self._server, None
        if server is None:
            return
        private, self._private = self._private, None
        if self._end_streams is not None:
            self._end_streams()
        # Only ever unlink the socket we created: kubelet or another instance may
        # have put a new file at the path since. gRPC removes the path it listens on
        # as the server begins to stop; a link to it goes at the same moment.
        if private is not None:
            self._unlink_if_ours(self.path)
        requests = cancel_requests()
        await server.stop(self.stop_grace if grace is None else grace)  # see host._cancellation
        self._unlink_if_ours(private or self.path)
        self._identity = None
        raise_lost_cancellation(requests)  # the stop may have swallowed ours

    def _unlink_if_ours(self, path: Path) -> None:
        if self._identity is not None and socket_identity(path) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
