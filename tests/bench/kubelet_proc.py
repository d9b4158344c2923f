"""A minimal kubelet device manager for the benchmarks, run as its own process.

``python kubelet_proc.py PLUGIN_DIR``. It does what kubelet does on the device-plugin
path and nothing more, so the figures measure the plugin host, not the fake kubelet
(the test suite's FakeKubelet also writes a checkpoint of every device on every
update, which would dominate at 100,000 devices):

* start: unlink every socket in the directory, serve ``Registration`` on kubelet.sock;
* Register: dial the plugin, call GetDevicePluginOptions, then (after returning) keep
  one ListAndWatch stream per resource, replacing any earlier one;
* restart: drop every connection and start again, as a restarted kubelet would.

Stdout, one JSON object per line, each with ``t`` = ``time.monotonic_ns()``:
``{"ev": "clean"}`` (the sockets in the directory unlinked), ``{"ev": "up"}`` (``t``:
just before kubelet.sock is bound), ``{"ev": "ready"}`` (it serves), ``{"ev": "rin", "res"}``
(a Register arrived), ``{"ev": "dialed", "res"}`` (the dial back connected),
``{"ev": "reg", "res"}`` (GetDevicePluginOptions answered, Register returns),
``{"ev": "list", "res", "n", "unhealthy"}`` (``t``: as the message arrived),
``{"ev": "end", "res", "why"}``. Stdin commands: ``restart``, ``quit``. Lines are written
up to 5 ms after their events, in batches (see ``common.EventLines``): the trace is the
benchmark's work, not kubelet's, and a write per event (four per resource) woke the
reading benchmark each time.

Where this process differs from kubelet in cost, not on the wire: each Register costs
~1.5 ms of CPU, nearly all grpcio's (call starts that write inline, completion
callbacks, its I/O and poller threads); and grpc.aio's server asks for the next
incoming call only once the previous one reached the event loop, so a burst of
Registers is taken in one at a time (kubelet's Go server starts a goroutine per
stream), each handled concurrently once in.

``BENCH_KUBELET_PROFILE=FILE`` runs the process under cProfile and writes the
statistics to FILE when it ends (then SIGTERM ends it through its cleanup).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import time
from typing import Any

import grpc
from common import EventLines

from host._api import api_pb2, api_pb2_grpc

KUBELET_MAX_MESSAGE = 4 * 1024 * 1024
GET_OPTIONS = "/v1beta1.DevicePlugin/GetDevicePluginOptions"
LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"
EVENTS = EventLines()
emit = EVENTS.emit


class BenchKubelet(api_pb2_grpc.RegistrationServicer):
    """Registration server plus one ListAndWatch client per registered resource."""

    def __init__(self, plugin_dir: str) -> None:
        self.plugin_dir = plugin_dir
        self.socket = os.path.join(plugin_dir, "kubelet.sock")
        self.server: grpc.aio.Server | None = None
        self.clients: dict[str, tuple[grpc.aio.Channel, asyncio.Task[None]]] = {}

    async def start(self) -> None:
        for entry in os.scandir(self.plugin_dir):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(entry.path).st_mode):
                    os.unlink(entry.path)
        emit("clean")
        server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(self, server)
        up = time.monotonic_ns()
        server.add_insecure_port(f"unix:{self.socket}")
        await server.start()
        self.server = server
        emit("up", up)
        emit("ready")

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(None)
        clients, self.clients = self.clients, {}
        for channel, task in clients.values():
            task.cancel()
            await channel.close()
        for _, task in clients.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)

    async def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.Empty:
        name = request.resource_name
        emit("rin", res=name)
        path = os.path.join(self.plugin_dir, request.endpoint)
        channel = grpc.aio.insecure_channel(
            f"unix:{path}",
            options=[
                # Go's grpc.Dial shares no connections between ClientConns; grpcio shares
                # subchannels (and their reconnect backoff) across channels and across
                # this process's restarts unless told not to.
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.default_authority", "localhost"),
                ("grpc.max_receive_message_length", KUBELET_MAX_MESSAGE),
            ],
        )
        try:
            async with asyncio.timeout(10):
                await channel.channel_ready()
            emit("dialed", res=name)
            # The two methods kubelet calls at registration, not the whole stub: each
            # multicallable costs a little, and a Register here would build five.
            get_options = channel.unary_unary(
                GET_OPTIONS,
                request_serializer=api_pb2.Empty.SerializeToString,
                response_deserializer=api_pb2.DevicePluginOptions.FromString,
            )
            await get_options(api_pb2.Empty())
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            await channel.close()
            await context.abort(grpc.StatusCode.UNKNOWN, f"cannot reach {path}: {exc}")
        old = self.clients.pop(name, None)
        if old is not None:
            old[1].cancel()
            await old[0].close()
        self.clients[name] = (channel, asyncio.create_task(self.watch(name, channel)))
        emit("reg", res=name)
        return api_pb2.Empty()

    async def watch(self, name: str, channel: grpc.aio.Channel) -> None:
        why = "EOF"
        list_and_watch = channel.unary_stream(
            LIST_AND_WATCH,
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.ListAndWatchResponse.FromString,
        )
        try:
            async for response in list_and_watch(api_pb2.Empty()):
                arrived = time.monotonic_ns()
                unhealthy = sum(d.health != "Healthy" for d in response.devices)
                emit("list", arrived, res=name, n=len(response.devices), unhealthy=unhealthy)
        except asyncio.CancelledError:
            return
        except grpc.aio.AioRpcError as err:
            why = f"{err.code().name}: {err.details()}"
        emit("end", res=name, why=why)


async def main(plugin_dir: str) -> None:
    kubelet = BenchKubelet(plugin_dir)
    await kubelet.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async for line in reader:
            command = line.decode().strip()
            if command == "restart":
                await kubelet.stop()
                await kubelet.start()
            elif command == "quit":
                break
    finally:
        await kubelet.stop()
        EVENTS.flush()


def profiled(plugin_dir: str, profile: str) -> None:
    """Serve under cProfile; write the statistics to ``profile`` at the end.

    The benchmarks stop their children with SIGTERM: here it ends the process as
    Ctrl-C would, through ``main``'s cleanup, so that the statistics are written.
    """
    import cProfile

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    profiler = cProfile.Profile()
    with contextlib.suppress(KeyboardInterrupt), profiler:
        asyncio.run(main(plugin_dir))
    profiler.dump_stats(profile)


if __name__ == "__main__":
    if os.environ.get("BENCH_KUBELET_PROFILE"):
        profiled(sys.argv[1], os.environ["BENCH_KUBELET_PROFILE"])
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(sys.argv[1]))
