"""The fake scheduler's KEP-5004 pieces on their own: requests, mappings, class resolution."""

from __future__ import annotations

from typing import Any

import pytest

from host.testing._extended import (
    container_requests,
    is_dra_extended_resource_name,
    requests_and_mappings,
    resolve_device_classes,
)

GPU = "gpu.intel.com/i915"
CLASSES = {GPU: "i915.gpu.intel.com"}


def container(name: str, count: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "resources": {"limits": {GPU: count}}, **extra}


def pod(init: list[dict[str, Any]], regular: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"initContainers": init, "containers": regular}}


def counts(requests: list[dict[str, Any]]) -> dict[str, int]:
    return {request["name"]: request["exactly"]["count"] for request in requests}


def mapped(mappings: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["containerName"], m["requestName"]) for m in mappings]


class TestRequestsAndMappings:
    def test_one_request_per_container(self) -> None:
        """Regular containers: a request each, named by container and resource index."""
        spec = pod([], [container("a", 1), container("b", 2)])
        spec["spec"]["containers"][1]["resources"]["requests"] = {"cpu": "1", "memory": "1Gi"}
        requests, mappings = requests_and_mappings(spec, [GPU], CLASSES)
        # b's requests sort as cpu, gpu.intel.com/i915, memory: the resource's index is 1
        assert counts(requests) == {"container-0-request-0": 1, "container-1-request-1": 2}
        assert mapped(mappings) == [("a", "container-0-request-0"), ("b", "container-1-request-1")]
        assert {r["exactly"]["deviceClassName"] for r in requests} == {"i915.gpu.intel.com"}

    def test_init_container_reuses_a_later_containers_devices(self) -> None:
        """An init container needing no more than the main one uses the main one's devices."""
        requests, mappings = requests_and_mappings(
            pod([container("setup", 1)], [container("main", 2)]), [GPU], CLASSES
        )
        assert counts(requests) == {"container-1-request-0": 2}
        assert mapped(mappings) == [
            ("main", "container-1-request-0"),
            ("setup", "container-1-request-0"),
        ]

    def test_init_container_needing_more_asks_for_the_rest(self) -> None:
        """Beyond what it reuses, an init container has a request of its own for the rest."""
        requests, mappings = requests_and_mappings(
            pod([container("setup", 3)], [container("main", 2)]), [GPU], CLASSES
        )
        assert counts(requests) == {"container-0-request-0": 1, "container-1-request-0": 2}
        assert mapped(mappings) == [
            ("main", "container-1-request-0"),
            ("setup", "container-1-request-0"),
            ("setup", "container-0-request-0"),
        ]

    def test_init_containers_share_the_largest_request(self) -> None:
        """Plain init containers run one at a time: their requests collapse into the largest."""
        requests, mappings = requests_and_mappings(
            pod([container("one", 1), container("two", 3)], [{"name": "main"}]), [GPU], CLASSES
        )
        assert counts(requests) == {"container-1-request-0": 3}
        assert mapped(mappings) == [
            ("one", "container-1-request-0"),
            ("two", "container-1-request-0"),
        ]

    def test_sidecar_keeps_its_own(self) -> None:
        """An init container with restartPolicy Always lives on: a request of its own."""
        sidecar = container("proxy", 1, restartPolicy="Always")
        requests, _ = requests_and_mappings(pod([sidecar], [container("main", 1)]), [GPU], CLASSES)
        assert counts(requests) == {"container-0-request-0": 1, "container-1-request-0": 1}


class TestResolution:
    def test_newest_class_wins_ties_to_the_first_name(self) -> None:
        """Two classes with one name: the newer; created together: the name sorted first."""

        def cls(name: str, created: str) -> dict[str, Any]:
            return {
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"extendedResourceName": GPU},
            }

        old, new = cls("a", "2026-01-01T00:00:00Z"), cls("z", "2026-02-01T00:00:00Z")
        assert resolve_device_classes([old, new])[GPU] == "z"
        assert resolve_device_classes([new, old])[GPU] == "z"
        twin_b, twin_a = cls("b", "2026-03-01T00:00:00Z"), cls("ab", "2026-03-01T00:00:00Z")
        assert resolve_device_classes([twin_b, twin_a])[GPU] == "ab"

    def test_every_class_has_its_implicit_name(self) -> None:
        """deviceclass.resource.kubernetes.io/<name> maps to the class, name or not."""
        resolved = resolve_device_classes([{"metadata": {"name": "i915.gpu.intel.com"}}])
        assert resolved == {
            "deviceclass.resource.kubernetes.io/i915.gpu.intel.com": "i915.gpu.intel.com"
        }
        assert is_dra_extended_resource_name("deviceclass.resource.kubernetes.io/x")
        assert is_dra_extended_resource_name(GPU)
        assert not is_dra_extended_resource_name("cpu")


class TestContainerRequests:
    def test_limits_default_requests(self) -> None:
        """Limits only (a pod written for the device plugin) count as requests."""
        assert container_requests(container("a", 2)) == {GPU: 2}

    def test_fractions_are_refused(self) -> None:
        """Extended resources are whole numbers."""
        with pytest.raises(ValueError, match="whole numbers"):
            container_requests({"name": "a", "resources": {"limits": {GPU: "500m"}}})
