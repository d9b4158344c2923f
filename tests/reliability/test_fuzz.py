"""Fuzzed DevicePlugin requests: every answer is a response or a proper status; nothing dies.

Three plugins serve side by side: a careful one (every optional method, validating its
input), a plain one (no optional methods: the framework's defaults), and a naive one
whose methods fail on odd input the way real code does (IndexError, KeyError). Each
test sends hypothesis-made requests to all three over real gRPC with kubelet's 4 MiB
receive limit, and after each example checks that every server still answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host._api import api_pb2
from host.deviceplugin import UNHEALTHY, DeviceInfo, Manager, Mount
from host.deviceplugin._endpoint import MAX_REQUEST_BYTES
from host.deviceplugin._service import id_cap
from host.testing import FakeKubelet

from .conftest import ServeFn, info, tree_of

pytestmark = pytest.mark.asyncio

HEALTHY_IDS = [f"d{i}" for i in range(6)]
SICK_IDS = ["sick0", "sick1"]
KNOWN_IDS = HEALTHY_IDS + SICK_IDS
PLUGINS = ("careful", "plain", "naive")
KUBELET_MAX_MESSAGE = 4 * 1024 * 1024
CALL_TIMEOUT = 20.0
"""A call that takes this long counts as a hung server."""

# A status the framework answers deliberately: always with a message naming the resource.
DELIBERATE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
}


def devices() -> dict[str, DeviceInfo]:
    out = {
        dev_id: info(
            f"/dev/fuzz/{dev_id}",
            envs={"FUZZ_DEVICE": dev_id},
            mounts=[Mount(host_path=f"/run/{dev_id}", container_path="/run/fuzz", read_only=True)],
            annotations={"fuzz.example.com/last": dev_id},
        )
        for dev_id in HEALTHY_IDS
    }
    out.update({dev_id: info(f"/dev/fuzz/{dev_id}", state=UNHEALTHY) for dev_id in SICK_IDS})
    return out


class PlainPlugin:
    """No optional methods: Allocate is the framework's default, the rest UNIMPLEMENTED."""

    async def scan(self, notifier: Any) -> None:
        notifier.notify(tree_of({"dev": devices()}))
        await asyncio.Future()


class CarefulPlugin(PlainPlugin):
    """Every optional method, each rejecting bad input with ValueError (INVALID_ARGUMENT)."""

    def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        response = api_pb2.PreferredAllocationResponse()
        for creq in request.container_requests:
            size, available = creq.allocation_size, list(dict.fromkeys(creq.available_deviceIDs))
            if not 0 < size <= len(available):
                raise ValueError(f"allocation_size {size} outside 1..{len(available)}")
            chosen = list(dict.fromkeys(creq.must_include_deviceIDs))[:size]
            chosen += [d for d in available if d not in chosen][: size - len(chosen)]
            response.container_responses.add(deviceIDs=chosen)
        return response

    async def pre_start_container(self, request: api_pb2.PreStartContainerRequest) -> None:
        unknown = [d for d in request.devices_ids if d not in KNOWN_IDS]
        if unknown:
            raise ValueError(f"unknown devices {unknown[:3]!r}")


class NaivePlugin(PlainPlugin):
    """Optional methods written for well-formed requests only; odd ones make them raise."""

    rank: ClassVar[dict[str, int]] = {d: index for index, d in enumerate(KNOWN_IDS)}

    def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        response = api_pb2.AllocateResponse()
        first = request.container_requests[0]  # IndexError for no containers
        for dev_id in first.devices_ids:
            self.rank[dev_id]  # KeyError for an unknown ID
            response.container_responses.add(envs={"NAIVE": dev_id})
        return response

    def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        creq = request.container_requests[0]
        ordered = sorted(creq.available_deviceIDs, key=self.rank.__getitem__)
        return api_pb2.PreferredAllocationResponse(
            container_responses=[{"deviceIDs": ordered[: creq.allocation_size]}]
        )

    async def pre_start_container(self, request: api_pb2.PreStartContainerRequest) -> None:
        for dev_id in request.devices_ids:
            self.rank[dev_id]


@dataclass
class Site:
    """The three plugins, kubelet, and a kubelet-like channel to each plugin's socket."""

    kubelet: FakeKubelet
    managers: dict[str, Manager]
    channels: dict[str, grpc.aio.Channel]

    def call(self, plugin: str, method: str, request_type: Any, response_type: Any) -> Any:
        return self.channels[plugin].unary_unary(
            f"/v1beta1.DevicePlugin/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    def raw(self, plugin: str, method: str) -> Any:
        return self.channels[plugin].unary_unary(f"/v1beta1.DevicePlugin/{method}")

    async def still_serving(self) -> None:
        """Every plugin answers a well-formed Allocate and kubelet still has it connected."""
        for plugin in PLUGINS:
            allocate = self.call(
                plugin, "Allocate", api_pb2.AllocateRequest, api_pb2.AllocateResponse
            )
            request = api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["d1"])]
            )
            response = await allocate(request, timeout=CALL_TIMEOUT)
            assert len(response.container_responses) == 1
            resource = f"{plugin}.example.com/dev"
            state = self.kubelet.resources[resource]
            assert state.connected
            assert state.allocatable == len(HEALTHY_IDS)
            assert self.managers[plugin].resources[resource].ready


@pytest_asyncio.fixture
async def site(kubelet: FakeKubelet, serve: ServeFn, short_dir: Path) -> AsyncIterator[Site]:
    plugins = {"careful": CarefulPlugin(), "plain": PlainPlugin(), "naive": NaivePlugin()}
    managers = {
        name: await serve(f"{name}.example.com", plugin) for name, plugin in plugins.items()
    }
    channels = {}
    for name in PLUGINS:
        await kubelet.wait_for_resource(f"{name}.example.com/dev", count=len(KNOWN_IDS))
        path = short_dir / f"{name}.example.com-dev.sock"
        channels[name] = grpc.aio.insecure_channel(
            f"unix:{path}", options=[("grpc.max_receive_message_length", KUBELET_MAX_MESSAGE)]
        )
    site = Site(kubelet, managers, channels)
    try:
        yield site
        await site.still_serving()
    finally:
        for channel in channels.values():
            await channel.close()


# -- strategies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeated:
    """``n`` IDs cycling through ``pattern``: a huge list that stays short in reports."""

    n: int
    pattern: tuple[str, ...]

    def ids(self) -> list[str]:
        return [self.pattern[i % len(self.pattern)] for i in range(self.n)]


IdList = list[str] | Repeated


def expand(ids: IdList) -> list[str]:
    return ids.ids() if isinstance(ids, Repeated) else ids


odd_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # NUL, RTL, emoji...
short_id = st.one_of(st.sampled_from(KNOWN_IDS), odd_text)
device_id = st.one_of(short_id, st.text(min_size=300, max_size=2000))
# Huge lists of short IDs: a request stays under the server's 8 MiB receive limit
# (TestOversizedInput covers going over it) and an answer under kubelet's 4 MiB.
huge_ids = st.builds(
    Repeated, st.integers(5_000, 10_000), st.lists(short_id, min_size=1, max_size=3).map(tuple)
)
id_list: st.SearchStrategy[IdList] = st.one_of(st.lists(device_id, max_size=12), huge_ids)
allocation_size = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 10))
allocate_specs = st.lists(id_list, max_size=4)
preferred_specs = st.lists(st.tuples(id_list, id_list, allocation_size), max_size=4)


def allocate_request(containers: list[IdList]) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(
        container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=expand(ids)) for ids in containers
        ]
    )


def preferred_request(
    containers: list[tuple[IdList, IdList, int]],
) -> api_pb2.PreferredAllocationRequest:
    return api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=expand(available),
                must_include_deviceIDs=expand(must),
                allocation_size=size,
            )
            for available, must, size in containers
        ]
    )


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- checks --------------------------------------------------------------------------------


def expected_allocate_error(request: api_pb2.AllocateRequest) -> grpc.StatusCode | None:
    """The status the default Allocate must answer, in the order it checks (None: success)."""
    if request_ids_refused([creq.devices_ids for creq in request.container_requests]):
        return grpc.StatusCode.INVALID_ARGUMENT
    if not request.container_requests:
        return grpc.StatusCode.INVALID_ARGUMENT
    for creq in request.container_requests:
        if not creq.devices_ids:
            return grpc.StatusCode.INVALID_ARGUMENT
        for dev_id in creq.devices_ids:
            if dev_id not in KNOWN_IDS:
                return grpc.StatusCode.NOT_FOUND
            if dev_id in SICK_IDS:
                return grpc.StatusCode.FAILED_PRECONDITION
    return None


def request_ids_refused(id_lists: Iterable[Iterable[str]]) -> bool:
    """Too many IDs for the resource (over id_cap), or one ID named twice."""
    ids = [dev_id for ids in id_lists for dev_id in ids]
    return len(ids) > id_cap(len(KNOWN_IDS)) or len(set(ids)) != len(ids)


def default_allocation(ids: Iterable[str]) -> api_pb2.ContainerAllocateResponse:
    expected = api_pb2.ContainerAllocateResponse()
    table = devices()
    for dev_id in ids:
        for node in table[dev_id].nodes:
            expected.devices.add(
                host_path=node.host_path,
                container_path=node.container_path,
                permissions=node.permissions,
            )
        for mount in table[dev_id].mounts:
            expected.mounts.add(
                host_path=mount.host_path,
                container_path=mount.container_path,
                read_only=mount.read_only,
            )
        expected.envs.update(table[dev_id].envs)
        expected.annotations.update(table[dev_id].annotations)
    return expected


def assert_proper_status(
    answer: object, plugin: str, *, internal_ok: bool
) -> grpc.StatusCode | None:
    """Check an error answer is a deliberate status naming the resource; return its code."""
    if not isinstance(answer, grpc.aio.AioRpcError):
        return None
    allowed = DELIBERATE | ({grpc.StatusCode.INTERNAL} if internal_ok else set())
    assert answer.code() in allowed, f"{plugin}: {answer.code()} {answer.details()!r}"
    assert f"{plugin}.example.com/dev" in (answer.details() or ""), answer.details()
    return answer.code()


async def outcome(call: Any) -> Any:
    """The response of a call, or the gRPC error it ended with."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        return err


async def options_answer(site: Site) -> None:
    """Every server still answers after the example (GetDevicePluginOptions)."""
    for plugin in PLUGINS:
        options = site.call(
            plugin, "GetDevicePluginOptions", api_pb2.Empty, api_pb2.DevicePluginOptions
        )
        await options(api_pb2.Empty(), timeout=CALL_TIMEOUT)


# -- tests ---------------------------------------------------------------------------------


class TestFuzzedRequests:
    @FUZZ
    @given(containers=allocate_specs)
    async def test_allocate(self, site: Site, containers: list[IdList]) -> None:
        """Allocate: the default path answers exactly per its checks; a naive plugin, INTERNAL."""
        request = allocate_request(containers)
        expected = expected_allocate_error(request)
        for plugin in PLUGINS:
            allocate = site.call(
                plugin, "Allocate", api_pb2.AllocateRequest, api_pb2.AllocateResponse
            )
            answer = await outcome(allocate(request, timeout=CALL_TIMEOUT))
            code = assert_proper_status(answer, plugin, internal_ok=plugin == "naive")
            if plugin == "naive":
                assert code is not None or len(answer.container_responses) >= 1
                continue
            assert code == expected
            if code is None:
                assert list(answer.container_responses) == [
                    default_allocation(creq.devices_ids) for creq in request.container_requests
                ]
        await options_answer(site)

    @FUZZ
    @given(containers=preferred_specs)
    async def test_get_preferred_allocation(
        self, site: Site, containers: list[tuple[IdList, IdList, int]]
    ) -> None:
        """GetPreferredAllocation: an answer per container, or a status; UNIMPLEMENTED if absent."""
        request = preferred_request(containers)
        for plugin in PLUGINS:
            preferred = site.call(
                plugin,
                "GetPreferredAllocation",
                api_pb2.PreferredAllocationRequest,
                api_pb2.PreferredAllocationResponse,
            )
            answer = await outcome(preferred(request, timeout=CALL_TIMEOUT))
            code = assert_proper_status(answer, plugin, internal_ok=plugin == "naive")
            if plugin == "plain":
                assert code == grpc.StatusCode.UNIMPLEMENTED
            elif plugin == "careful" and code is None:
                assert [len(a.deviceIDs) for a in answer.container_responses] == [
                    c.allocation_size for c in request.container_requests
                ]
        await options_answer(site)

    @FUZZ
    @given(ids=id_list)
    async def test_pre_start_container(self, site: Site, ids: IdList) -> None:
        """PreStartContainer: an empty response or a status; UNIMPLEMENTED if absent."""
        request = api_pb2.PreStartContainerRequest(devices_ids=expand(ids))
        for plugin in PLUGINS:
            pre_start = site.call(
                plugin,
                "PreStartContainer",
                api_pb2.PreStartContainerRequest,
                api_pb2.PreStartContainerResponse,
            )
            answer = await outcome(pre_start(request, timeout=CALL_TIMEOUT))
            code = assert_proper_status(answer, plugin, internal_ok=plugin == "naive")
            if plugin == "plain":
                assert code == grpc.StatusCode.UNIMPLEMENTED
            elif plugin == "careful":
                unknown = any(d not in KNOWN_IDS for d in request.devices_ids)
                refused = request_ids_refused([request.devices_ids])
                assert code == (grpc.StatusCode.INVALID_ARGUMENT if unknown or refused else None)
            if code is None:
                assert answer == api_pb2.PreStartContainerResponse()
        await options_answer(site)

    @FUZZ
    @given(method=st.sampled_from(["Allocate", "GetPreferredAllocation", "PreStartContainer"]),
           payload=st.binary(max_size=512))  # fmt: skip
    async def test_undecodable_bytes(self, site: Site, method: str, payload: bytes) -> None:
        """Arbitrary bytes as a request (bad UTF-8 too): a response or a status, never a crash."""
        for plugin in PLUGINS:
            answer = await outcome(site.raw(plugin, method)(payload, timeout=CALL_TIMEOUT))
            if not isinstance(answer, grpc.aio.AioRpcError):
                continue
            if answer.code() == grpc.StatusCode.UNKNOWN:
                # Undecodable bytes never reach the framework: grpc.aio itself answers
                # UNKNOWN, naming the DecodeError.
                assert "Error parsing message" in (answer.details() or ""), answer.details()
            else:
                assert_proper_status(answer, plugin, internal_ok=plugin == "naive")
        await options_answer(site)


class TestOversizedInput:
    async def test_request_over_the_receive_limit(self, site: Site) -> None:
        """A request over the server's 8 MiB limit: RESOURCE_EXHAUSTED, and serving goes on."""
        allocate = site.call(
            "careful", "Allocate", api_pb2.AllocateRequest, api_pb2.AllocateResponse
        )
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["x" * 1024] * 9_000)]
        )
        assert request.ByteSize() > MAX_REQUEST_BYTES
        answer = await outcome(allocate(request, timeout=60))
        assert isinstance(answer, grpc.aio.AioRpcError)
        assert answer.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    @pytest.mark.parametrize("device_id", ["x" * 20_000, "\u00e9" * 3_000])
    async def test_long_unknown_id_keeps_its_status(self, site: Site, device_id: str) -> None:
        """An unknown ID too long to echo whole still gets NOT_FOUND (the message is cut)."""
        allocate = site.call("plain", "Allocate", api_pb2.AllocateRequest, api_pb2.AllocateResponse)
        answer = await outcome(allocate(allocate_request([[device_id]]), timeout=CALL_TIMEOUT))
        assert assert_proper_status(answer, "plain", internal_ok=False) == grpc.StatusCode.NOT_FOUND
        assert "more bytes" in answer.details()

    async def test_long_plugin_error_keeps_its_status(self, site: Site) -> None:
        """A plugin's ValueError quoting long IDs still gets INVALID_ARGUMENT."""
        pre_start = site.call(
            "careful",
            "PreStartContainer",
            api_pb2.PreStartContainerRequest,
            api_pb2.PreStartContainerResponse,
        )
        request = api_pb2.PreStartContainerRequest(devices_ids=["\U0001f4a5" * 2_000] * 3)
        answer = await outcome(pre_start(request, timeout=CALL_TIMEOUT))
        code = assert_proper_status(answer, "careful", internal_ok=False)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
