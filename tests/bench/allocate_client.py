"""Kubelet's side of the Allocate figure, in its own process: serial Allocate calls.

``python allocate_client.py SPEC_JSON``; the spec names ``targets`` (label -> socket
path), ``ids`` (device IDs, one per call, round robin), ``warmup`` calls per target,
then ``blocks`` rounds of ``block`` calls per target, the order of targets alternating
each round so neither side always runs first. Calls are serial with no deadline, as
kubelet makes them (it admits pods one at a time). Prints one JSON object mapping each
label to its latencies in nanoseconds; with ``progress`` set, also prints
``{"ev": "progress", "calls": n}`` every ``progress`` calls. With ``stamps`` set, also
the start of every call (``time.monotonic_ns()``, comparable across processes).
"""

from __future__ import annotations

import json
import sys
import time

import grpc

from host._api import api_pb2


def main(spec: dict) -> None:
    ids = spec["ids"]
    stubs = {}
    channels = []
    for label, path in spec["targets"].items():
        channel = grpc.insecure_channel(f"unix:{path}")
        grpc.channel_ready_future(channel).result(timeout=30)
        channels.append(channel)
        stubs[label] = channel.unary_unary(
            "/v1beta1.DevicePlugin/Allocate",
            request_serializer=api_pb2.AllocateRequest.SerializeToString,
            response_deserializer=api_pb2.AllocateResponse.FromString,
        )
    requests = [
        api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[dev_id])]
        )
        for dev_id in ids
    ]
    progress = spec.get("progress") or 0
    done = 0
    for call in stubs.values():
        for index in range(spec["warmup"]):
            call(requests[index % len(requests)])
    latencies: dict[str, list[int]] = {label: [] for label in stubs}
    stamps: dict[str, list[int]] = {label: [] for label in stubs}
    monotonic = time.monotonic_ns
    labels = list(stubs)
    clock = time.perf_counter_ns
    for block in range(spec["blocks"]):
        order = labels if block % 2 == 0 else labels[::-1]
        for label in order:
            call, out = stubs[label], latencies[label]
            for index in range(spec["block"]):
                request = requests[index % len(requests)]
                if spec.get("stamps"):
                    stamps[label].append(monotonic())
                start = clock()
                call(request)
                out.append(clock() - start)
                done += 1
                if progress and done % progress == 0:
                    print(json.dumps({"ev": "progress", "calls": done}), flush=True)
    for channel in channels:
        channel.close()
    print(json.dumps({"ev": "latencies", "latencies": latencies, "stamps": stamps}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
