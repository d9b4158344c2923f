"""ClaimConsumers: whom each fetched claim is reserved for, remembered by claim UID."""

from __future__ import annotations

import pytest

from host.dra import ClaimConsumer, ClaimConsumers
from host.dra._consumers import reserved_for
from host.testing import FakeClaims, allocated_claim


def claim(name: str, uid: str, *entries: object) -> dict[str, object]:
    data = allocated_claim("ml", name, uid)
    data["status"] = {"reservedFor": list(entries)}
    return data


class TestReservedFor:
    def test_pods_and_other_consumers(self) -> None:
        """Pods by name; another resource with its group; malformed entries left out."""
        found = reserved_for(
            claim(
                "c",
                "u",
                {"resource": "pods", "name": "train", "uid": "p1"},
                {"apiGroup": "batch", "resource": "jobs", "name": "nightly", "uid": "j1"},
                {"resource": "pods"},
                "garbage",
            )
        )
        assert found == (
            ClaimConsumer("pods", "train", "p1"),
            ClaimConsumer("jobs", "nightly", "j1", "batch"),
        )
        assert [str(consumer) for consumer in found] == ["train", "jobs.batch/nightly"]
        assert found[1].to_json() == {
            "resource": "jobs",
            "name": "nightly",
            "uid": "j1",
            "api_group": "batch",
        }

    def test_no_status(self) -> None:
        """A claim without status, or with a malformed one, is reserved for nobody."""
        assert reserved_for({"metadata": {}}) == ()
        assert reserved_for({"status": {"reservedFor": "train"}}) == ()


@pytest.mark.asyncio
class TestClaimConsumers:
    async def test_remembers_each_fetched_claim(self) -> None:
        """A fetched claim's consumers by UID; a claim never fetched is unknown (None)."""
        source = FakeClaims()
        source.put(claim("a", "uid-a", {"resource": "pods", "name": "train", "uid": "p1"}))
        consumers = ClaimConsumers(source)
        fetched = await consumers.get_claim("ml", "a")
        assert fetched["metadata"]["uid"] == "uid-a"
        assert consumers.of("uid-a") == (ClaimConsumer("pods", "train", "p1"),)
        assert consumers.of("uid-b") is None

    async def test_forgets_what_is_no_longer_prepared_first(self) -> None:
        """Past the limit, claims no longer prepared go first, then the oldest."""
        source = FakeClaims()
        for index in range(4):
            source.put(claim(f"c{index}", f"u{index}"))
        consumers = ClaimConsumers(source, keep=2)
        consumers.prepared = lambda: {"u0"}
        for index in range(3):
            await consumers.get_claim("ml", f"c{index}")
        assert consumers.of("u0") == ()  # prepared: kept although the oldest
        assert consumers.of("u1") is None  # the oldest of the others
        assert consumers.of("u2") == ()  # fetched last: maybe being prepared now
        consumers.prepared = lambda: ()
        await consumers.get_claim("ml", "c3")
        assert [consumers.of(f"u{index}") for index in range(4)] == [None, None, (), ()]
