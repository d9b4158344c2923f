"""Socket names of a DRA driver, with and without an instance id (rolling update)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from host.dra._sockets import SOCKET_PATH_MAX, dra_socket_path, registration_socket_path

DRIVER = "gpu.example.com"
POD_UID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uid_hash(instance_id: str) -> str:
    return b64(hashlib.sha256(instance_id.encode()).digest()[:8])


class TestWithoutInstanceId:
    def test_the_helpers_default_names(self) -> None:
        """dra.sock in the driver's directory, <driver>-reg.sock in the registry."""
        assert dra_socket_path("/p", DRIVER) == Path(f"/p/{DRIVER}/dra.sock")
        assert registration_socket_path("/r", DRIVER) == Path(f"/r/{DRIVER}-reg.sock")


class TestWithInstanceId:
    def test_a_pod_uid_is_in_both_names(self) -> None:
        """The kubeletplugin helper's RollingUpdate names: the pod UID verbatim."""
        assert dra_socket_path("/p", DRIVER, POD_UID) == Path(f"/p/{DRIVER}/dra-{POD_UID}.sock")
        assert registration_socket_path("/r", DRIVER, POD_UID) == Path(
            f"/r/{DRIVER}-{POD_UID}-reg.sock"
        )

    @pytest.mark.parametrize("instance_id", ["pod/a", "../x", "x\\y", "caf\u00e9"])
    def test_an_id_that_is_no_file_name_part_is_hashed(self, instance_id: str) -> None:
        """A '/' or other character never reaches a file name: both sockets stay in place."""
        dra = dra_socket_path("/p", DRIVER, instance_id)
        reg = registration_socket_path("/r", DRIVER, instance_id)
        assert dra == Path(f"/p/{DRIVER}/dra-{uid_hash(instance_id)}.sock")
        assert reg == Path(f"/r/{DRIVER}-{uid_hash(instance_id)}-reg.sock")

    def test_a_long_id_falls_back_to_its_hash(self) -> None:
        """An id too long for a socket address: the hashed forms, each within the limit."""
        instance_id = "x" * 200
        dra = dra_socket_path("/p", DRIVER, instance_id)
        reg = registration_socket_path("/r", DRIVER, instance_id)
        assert dra.name == f"dra-{uid_hash(instance_id)}.sock"
        assert reg.name == f"{DRIVER}-{uid_hash(instance_id)}-reg.sock"

    def test_a_deep_registry_gets_the_shortest_name(self) -> None:
        """Where even <driver>-<hash>-reg.sock does not fit: dra-<hash of driver and id>."""
        registry = "/" + "r" * (SOCKET_PATH_MAX - len(f"/{DRIVER}-{uid_hash(POD_UID)}-reg.sock"))
        digest = b64(hashlib.sha256(f"{DRIVER}\x00{POD_UID}".encode()).digest()[:16])
        path = registration_socket_path(registry, DRIVER, POD_UID)
        assert path == Path(registry) / f"dra-{digest}-reg.sock"
        assert len(str(path).encode()) <= SOCKET_PATH_MAX

    def test_two_instances_never_share_a_socket(self) -> None:
        """Different ids, different sockets (what lets them serve side by side)."""
        for make, where in ((dra_socket_path, "/p"), (registration_socket_path, "/r")):
            names = {make(where, DRIVER, i) for i in ("a", "b", "a/b", "a-b", "x" * 200)}
            assert len(names) == 5
