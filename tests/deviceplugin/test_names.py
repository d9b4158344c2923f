"""Socket names: one per resource and per instance id."""

from __future__ import annotations

import pytest

from host.deviceplugin._names import instance_id_error, instance_tag, socket_name


class TestSocketName:
    def test_without_instance_id_the_name_is_unchanged(self) -> None:
        """No instance id: ``<namespace>-<type>.sock``, as before instance ids existed."""
        assert socket_name("gpu.intel.com", "i915") == "gpu.intel.com-i915.sock"

    def test_instance_id_adds_a_short_hash(self) -> None:
        """With an instance id the name carries 8 hex digits of its SHA-256."""
        uid = "3f2a9c1e-7b1d-4c55-9a57-0d3f2b1c9e11"
        name = socket_name("gpu.intel.com", "i915", uid)
        assert name == f"gpu.intel.com-i915-{instance_tag(uid)}.sock"
        assert len(instance_tag(uid)) == 8
        assert int(instance_tag(uid), 16) >= 0

    def test_two_instances_get_two_sockets(self) -> None:
        """The old and the new pod of a rolling update never share a socket."""
        a = socket_name("x.example.com", "dev", "pod-a")
        assert a != socket_name("x.example.com", "dev", "pod-b")
        assert a == socket_name("x.example.com", "dev", "pod-a")


class TestInstanceIdError:
    @pytest.mark.parametrize("good", ["3f2a9c1e-7b1d-4c55-9a57-0d3f2b1c9e11", "node-1", "a"])
    def test_accepts_pod_uids_and_names(self, good: str) -> None:
        """A pod UID, a name: fine."""
        assert instance_id_error(good) is None

    @pytest.mark.parametrize(
        ("bad", "reason"),
        [("", "empty"), ("a b", "whitespace"), ("x" * 254, "at most 253"), ("a\x00", "printable")],
    )
    def test_rejects_with_the_reason(self, bad: str, reason: str) -> None:
        """Empty, whitespace, too long, control characters: the reason says which."""
        problem = instance_id_error(bad)
        assert problem is not None
        assert reason in problem
