"""One gRPC channel to ``kubelet.sock`` for the Register calls of every resource of a process.

Every resource of a process registers with the same kubelet, and after a kubelet restart
all of them do at once. A channel each meant one connection each, set up while kubelet
waits to dial back; one shared channel connects once, as soon as the new ``kubelet.sock``
appears (while the resources are still re-creating their own sockets), and carries every
Register as a stream of that one connection.

Each new ``kubelet.sock`` gets a new channel, and so does a failed call: a channel never
inherits the reconnect backoff of an attempt that found no kubelet listening (which
would delay the registration with a kubelet that has just come up). A replaced channel
is closed once the calls on it have ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

import grpc

from host.deviceplugin._watcher import PluginDirWatcher, WatchEvent, WatchEventKind

__all__ = ["REGISTER_CHANNEL_OPTIONS", "REGISTER_TIMEOUT", "KubeletChannel"]

REGISTER_TIMEOUT = 15.0
"""Kubelet dials back for up to 10 s inside Register; allow for that plus the options call."""
REGISTER_CHANNEL_OPTIONS = (
    # gRPC shares subchannels between channels to the same target: a fresh channel
    # would inherit the reconnect backoff (1 s, then more) of an earlier attempt that
    # found kubelet.sock not yet listening. A pool of our own and short backoffs keep
    # each channel independent; the endpoint's own backoff paces the retries.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
"""Options of the channel the Register calls use."""


class KubeletChannel:
    """The shared Register channel of the resources watching one :class:`PluginDirWatcher`.

    Get it with :meth:`of`; each resource holds it (:meth:`acquire`) while it runs and
    lets go (:meth:`release`) when it stops; the last one out closes the channel.
    """

    _shared: ClassVar[dict[int, KubeletChannel]] = {}

    def __init__(self, watcher: PluginDirWatcher) -> None:
        self._watcher = watcher
        self._channel: grpc.aio.Channel | None = None
        self._users = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    @classmethod
    def of(cls, watcher: PluginDirWatcher) -> KubeletChannel:
        """Return the shared channel of ``watcher``'s resources (made on first use)."""
        shared = cls._shared.get(id(watcher))
        if shared is None or shared._watcher is not watcher:
            shared = cls._shared[id(watcher)] = cls(watcher)
        return shared

    def acquire(self) -> None:
        """Count one more resource using the channel; the first one watches for kubelet."""
        self._users += 1
        if self._users == 1:
            self._unsubscribe = self._watcher.subscribe(self._on_event)

    async def release(self) -> None:
        """Count one resource less; the last one closes every channel."""
        self._users -= 1
        if self._users > 0:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        channel, self._channel = self._channel, None
        closing = [channel] if channel is not None else []
        # The resources have stopped: nothing on these channels is worth waiting for.
        for task, old in list(self._closing.items()):
            task.cancel()
            closing.append(old)
        for old in closing:
            await old.close()
        if self._shared.get(id(self._watcher)) is self:
            del self._shared[id(self._watcher)]

    def channel(self) -> grpc.aio.Channel:
        """Return the channel to the kubelet socket as it is now (made if there is none)."""
        if self._channel is None:
            self._renew(connect=False)
        assert self._channel is not None
        return self._channel

    async def connect(self) -> grpc.aio.Channel:
        """Return the channel once it is connected to kubelet (connecting if need be).

        Fails as a call would: :class:`grpc.aio.AioRpcError` UNAVAILABLE when no kubelet
        answers (the next call gets a fresh channel), DEADLINE_EXCEEDED after
        :data:`REGISTER_TIMEOUT`. A failed attempt gets one more on a fresh channel: the
        one made as ``kubelet.sock`` appears can fail while kubelet is still starting
        its server. A channel replaced meanwhile (a new ``kubelet.sock``) is followed to
        its successor.
        """
        channel = self.channel()
        retried = False
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT):
                state = channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    shut = state is grpc.ChannelConnectivity.SHUTDOWN
                    if channel is not self._channel:
                        # Replaced meanwhile (a new kubelet.sock, or another resource's
                        # call failed on it): it is being closed, and waiting on a
                        # closing channel raises UsageError. Follow the current one.
                        channel = self.channel()
                    elif shut or state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                        self.failed(channel)
                        if retried:
                            raise grpc.aio.AioRpcError(
                                grpc.StatusCode.UNAVAILABLE,
                                details=f"cannot connect to {self._watcher.kubelet_socket}",
                            )
                        retried = True
                        channel = self.channel()
                    else:
                        await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            self.failed(channel)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                details=f"no connection to {self._watcher.kubelet_socket} "
                f"within {REGISTER_TIMEOUT:.0f} s",
            ) from None
        return channel

    def failed(self, channel: grpc.aio.Channel) -> None:
        """Say a call on ``channel`` failed: the next call gets a fresh channel."""
        if self._channel is channel:
            self._channel = None
            self._close_later(channel)

    def _on_event(self, event: WatchEvent) -> None:
        if event.kind is WatchEventKind.KUBELET_STARTED:
            # A new kubelet: connect now, while the resources re-create their sockets.
            self._renew(connect=True)

    def _renew(self, *, connect: bool) -> None:
        old = self._channel
        self._channel = grpc.aio.insecure_channel(
            f"unix://{self._watcher.kubelet_socket}", options=REGISTER_CHANNEL_OPTIONS
        )
        if connect:
            self._channel.get_state(try_to_connect=True)
        if old is not None:
            self._close_later(old)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        # Calls under way on it end first: a Register that kubelet is answering must
        # not be cut off (kubelet would count it, and we would register again).
        task = asyncio.get_running_loop().create_task(channel.close(grace=REGISTER_TIMEOUT))
        self._closing[task] = channel
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.pop(task, None)
