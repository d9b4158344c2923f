"""CDI spec validation, names, and the spec-file writer (real files in tmp_path)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from host.deviceplugin import DeviceInfo
from host.deviceplugin._cdi import (
    CdiSpecWriter,
    qualified_name,
    spec_file_name,
    validate_cdi_spec,
)


def make_spec(
    name: str = "card0", kind: Any = "intel.cdi.k8s.io/gpu", **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {
                "name": name,
                "containerEdits": {
                    "deviceNodes": [{"path": f"/dev/dri/{name}", "permissions": "rw"}]
                },
            }
        ],
    }
    spec.update(extra)
    return spec


def with_device(**fields: Any) -> dict[str, Any]:
    spec = make_spec()
    spec["devices"][0].update(fields)
    return spec


def with_edits(**edits: Any) -> dict[str, Any]:
    return with_device(containerEdits=edits)


class TestValidate:
    def test_returns_a_plain_deep_copy(self) -> None:
        """The result equals the input but shares nothing with it; tuples become lists."""
        spec = make_spec()
        spec["devices"][0]["containerEdits"]["env"] = ("A=1",)
        result = validate_cdi_spec(MappingProxyType(spec))
        assert type(result) is dict
        assert result["devices"][0]["containerEdits"]["env"] == ["A=1"]
        spec["devices"][0]["name"] = "changed"
        assert result["devices"][0]["name"] == "card0"

    @pytest.mark.parametrize(
        ("kind", "name"),
        [
            ("intel.cdi.k8s.io/gpu", "card0"),
            ("a/b", "c"),
            ("vendor.com/foo", "0000:00:02.0"),
            ("foo.bar.baz/foo-bar123.B_az", "x_y-z.w:1"),
            ("v" * 253 + "/" + "c" * 63, "n" * 300),
        ],
    )
    def test_valid_names(self, kind: str, name: str) -> None:
        """Names following the CDI parser rules (and length limits) are accepted."""
        assert validate_cdi_spec(make_spec(name=name, kind=kind))["kind"] == kind

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ({k: v for k, v in make_spec().items() if k != "cdiVersion"}, "cdiVersion.*None"),
            (make_spec(cdiVersion="0.5"), "cdiVersion.*'0.5'"),
            (make_spec(cdiVersion=5), "cdiVersion.*5"),
            (make_spec(cdiVersion="v0.5.0"), "cdiVersion.*'v0.5.0'"),
            (make_spec(kind="gpu"), "kind must be '<vendor>/<class>'.*'gpu'"),
            (make_spec(kind="vendor.com/foo/bar"), "kind.*'vendor.com/foo/bar'"),
            (make_spec(kind=None), "kind.*None"),
            (make_spec(kind="/gpu"), "vendor must be a non-empty string"),
            (make_spec(kind="vendor.com/"), "class must be a non-empty string"),
            (make_spec(kind="1vendor/gpu"), "vendor '1vendor' is invalid: it must start with"),
            (make_spec(kind="vendor-/gpu"), "vendor 'vendor-' is invalid"),
            (make_spec(kind="vendor/gpu-"), "class 'gpu-' is invalid"),
            (make_spec(kind="vendor/g:pu"), "class 'g:pu' is invalid"),
            (make_spec(kind="ven dor/gpu"), "vendor 'ven dor' is invalid"),
            (make_spec(kind="v" * 254 + "/gpu"), "vendor 'v+' is 254 characters long"),
            (make_spec(kind="vendor/" + "c" * 64), "class 'c+' is 64 characters long"),
        ],
    )
    def test_bad_version_or_kind(self, spec: dict[str, Any], message: str) -> None:
        """A bad cdiVersion or kind is a ValueError naming the field and the value."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(spec)

    @pytest.mark.parametrize(
        ("devices", "message"),
        [
            (None, "exactly one device, got no list"),
            ("card0", "exactly one device, got no list"),
            ([], "exactly one device, got 0"),
            (make_spec()["devices"] * 2, "exactly one device, got 2"),
            (["card0"], r"devices\[0\] must be a mapping"),
        ],
    )
    def test_exactly_one_device(self, devices: Any, message: str) -> None:
        """devices must hold exactly one device."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(make_spec(devices=devices))

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            (None, "device name must be a non-empty string, got None"),
            ("", "device name must be a non-empty string, got ''"),
            ("-card0", "device name '-card0' is invalid"),
            ("card0-", "device name 'card0-' is invalid"),
            ("card/0", "device name 'card/0' is invalid"),
            ("card=0", "device name 'card=0' is invalid"),
        ],
    )
    def test_bad_device_name(self, name: Any, message: str) -> None:
        """A bad device name is a ValueError naming it."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(with_device(name=name))

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (with_device(containerEdits=None), "containerEdits must be a mapping.*None"),
            (with_device(containerEdits=[]), r"containerEdits must be a mapping.*\[\]"),
            (with_edits(), "at least one edit"),
            (with_edits(env=[], mounts=[]), "at least one edit"),
            (with_edits(env=["FOO"]), "env entry must be 'NAME=value', got 'FOO'"),
            (with_edits(env=["=x"]), "env entry must be 'NAME=value', got '=x'"),
            (with_edits(env="A=1"), "env must be a list, got 'A=1'"),
            (with_edits(deviceNodes=[{"permissions": "rw"}]), "needs a non-empty path"),
            (with_edits(deviceNodes=["/dev/x"]), "deviceNodes entries must be mappings"),
            (with_edits(deviceNodes=[{"path": "/dev/x", "type": "x"}]), "type must be one of"),
            (
                with_edits(deviceNodes=[{"path": "/dev/x", "permissions": "rwx"}]),
                "'/dev/x': permissions must combine.*'rwx'",
            ),
            (with_edits(mounts=[{"hostPath": "/a"}]), "needs a non-empty containerPath"),
            (with_edits(hooks=[{"hookName": "later", "path": "/bin/x"}]), "hookName.*'later'"),
            (with_edits(hooks=[{"hookName": "poststop"}]), "hook 'poststop' needs a non-empty"),
            (
                make_spec(containerEdits={"env": ["BAD"]}),
                "spec 'intel.cdi.k8s.io/gpu': containerEdits: env entry.*'BAD'",
            ),
            (make_spec(containerEdits=["x"]), "containerEdits must be a mapping"),
        ],
    )
    def test_bad_edits(self, spec: dict[str, Any], message: str) -> None:
        """Edits a container runtime would refuse are refused here, naming the device."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(spec)

    def test_error_names_the_device(self) -> None:
        """Edit errors carry the qualified device name."""
        with pytest.raises(ValueError, match=r"CDI device 'intel.cdi.k8s.io/gpu=card0'"):
            validate_cdi_spec(with_edits())

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (object(), "CDI spec.extra is not JSON-serialisable: object"),
            ({1, 2}, "not JSON-serialisable: set"),
            (float("nan"), "not JSON-serialisable: nan"),
            ({1: "a"}, "key 1 is not a string"),
            ([b"x"], r"extra\[0\] is not JSON-serialisable: bytes"),
        ],
    )
    def test_not_json(self, value: Any, message: str) -> None:
        """Values JSON cannot hold faithfully are refused."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(make_spec(extra=value))

    def test_not_a_mapping(self) -> None:
        """A spec that is not a mapping is refused."""
        with pytest.raises(ValueError, match="CDI spec must be a mapping, got list"):
            validate_cdi_spec([])  # type: ignore[arg-type]


class TestDeviceInfo:
    def test_bad_spec_fails_at_construction(self) -> None:
        """DeviceInfo(cdi_spec=bad) raises ValueError when the scanner builds it."""
        with pytest.raises(ValueError, match="exactly one device, got 0"):
            DeviceInfo(cdi_spec=make_spec(devices=[]))

    def test_good_spec_is_copied(self) -> None:
        """DeviceInfo keeps a validated copy; equal specs make equal DeviceInfos."""
        spec = make_spec()
        info = DeviceInfo(cdi_spec=spec)
        spec["kind"] = "other.com/x"
        assert info.cdi_spec is not None
        assert info.cdi_spec["kind"] == "intel.cdi.k8s.io/gpu"
        assert info == DeviceInfo(cdi_spec=make_spec())


class TestNames:
    def test_qualified_name(self) -> None:
        """The qualified name is <kind>=<device name>."""
        assert qualified_name(make_spec(name="card0")) == "intel.cdi.k8s.io/gpu=card0"

    def test_file_name(self) -> None:
        """The file name is <vendor>-<class>-<name>.json, with dashes inside parts doubled."""
        assert spec_file_name(make_spec(name="card0")) == "intel.cdi.k8s.io-gpu-card0.json"
        assert spec_file_name(make_spec(name="card0-1")) == "intel.cdi.k8s.io-gpu-card0--1.json"
        assert (
            spec_file_name(make_spec(kind="a.b/c_d", name="0000:00:02.0"))
            == "a.b-c_d-0000:00:02.0.json"
        )

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            (("a-b/c", "d"), ("a/b-c", "d")),
            (("a/b", "c-d"), ("a/b-c", "d")),
            (("a/b", "c--d"), ("a/b", "c-d")),
        ],
    )
    def test_file_names_are_unique(self, first: tuple[str, str], second: tuple[str, str]) -> None:
        """Qualified names that a plain '-' join would confuse get distinct file names."""
        a = make_spec(kind=first[0], name=first[1])
        b = make_spec(kind=second[0], name=second[1])
        assert spec_file_name(a) != spec_file_name(b)

    def test_long_names_are_hashed(self) -> None:
        """Names too long for a file system are cut and made unique by a hash."""
        kind = "v" * 253 + "/" + "c" * 63
        a = spec_file_name(make_spec(kind=kind, name="n" * 300))
        b = spec_file_name(make_spec(kind=kind, name="n" * 299 + "m"))
        assert a != b
        assert len(a.encode()) <= 255
        assert "@" in a
        assert a.endswith(".json")
        assert "/" not in a


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestWrite:
    def test_write_creates_a_complete_file(self, tmp_path: Path) -> None:
        """write() creates the directory (0755) and a complete 0644 JSON file, nothing else."""
        cdi_dir = tmp_path / "run" / "cdi"
        path = CdiSpecWriter(cdi_dir).write(make_spec())
        assert path == cdi_dir / "intel.cdi.k8s.io-gpu-card0.json"
        assert json.loads(path.read_text()) == make_spec()
        assert _mode(path) == 0o644
        assert _mode(cdi_dir) == 0o755
        assert os.listdir(cdi_dir) == [path.name]

    def test_identical_content_is_not_rewritten(self, tmp_path: Path) -> None:
        """Writing the same spec again leaves the file (same inode) alone."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.write(make_spec())
        inode = path.stat().st_ino
        assert writer.write(make_spec()) == path
        assert CdiSpecWriter(tmp_path).write(make_spec()) == path
        assert path.stat().st_ino == inode

    def test_changed_content_is_replaced(self, tmp_path: Path) -> None:
        """A changed spec replaces the file atomically (a new inode, no temp files left)."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.write(make_spec())
        inode = path.stat().st_ino
        changed = make_spec()
        changed["devices"][0]["containerEdits"]["env"] = ["A=1"]
        writer.write(changed)
        assert path.stat().st_ino != inode
        assert json.loads(path.read_text()) == changed
        assert os.listdir(tmp_path) == [path.name]

    def test_wrong_mode_is_rewritten(self, tmp_path: Path) -> None:
        """Identical bytes with another mode are rewritten with 0644."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.write(make_spec())
        path.chmod(0o600)
        writer.write(make_spec())
        assert _mode(path) == 0o644

    def test_unwritable_directory(self, tmp_path: Path) -> None:
        """A directory that cannot be created raises OSError naming the spec's path."""
        blocker = tmp_path / "cdi"
        blocker.write_text("a file where the directory should be")
        with pytest.raises(OSError, match=r"cannot write CDI spec .*cdi/intel\.cdi\.k8s\.io-gpu"):
            CdiSpecWriter(blocker).write(make_spec())

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
    def test_read_only_directory(self, tmp_path: Path) -> None:
        """A read-only directory raises OSError naming the path and leaves no temp file."""
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(OSError, match="cannot write CDI spec"):
                CdiSpecWriter(tmp_path).write(make_spec())
            assert os.listdir(tmp_path) == []
        finally:
            tmp_path.chmod(0o755)

    def test_non_regular_file_in_the_way(self, tmp_path: Path) -> None:
        """A directory or symlink at the spec's path is an error, and is left alone."""
        writer = CdiSpecWriter(tmp_path)
        (tmp_path / spec_file_name(make_spec())).mkdir()
        with pytest.raises(OSError, match="not a regular file"):
            writer.write(make_spec())
        target = tmp_path / "elsewhere"
        target.write_text("keep")
        (tmp_path / spec_file_name(make_spec(name="card1"))).symlink_to(target)
        with pytest.raises(OSError, match="not a regular file"):
            writer.write(make_spec(name="card1"))
        assert target.read_text() == "keep"

    def test_invalid_spec(self, tmp_path: Path) -> None:
        """write() validates first."""
        with pytest.raises(ValueError, match="exactly one device"):
            CdiSpecWriter(tmp_path).write(make_spec(devices=[]))


class TestRemove:
    def test_remove_written_file(self, tmp_path: Path) -> None:
        """remove() deletes a file this writer wrote."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.write(make_spec())
        assert writer.remove(make_spec()) is True
        assert not path.exists()
        assert writer.remove(make_spec()) is False

    def test_foreign_file_is_kept(self, tmp_path: Path) -> None:
        """A file this writer never wrote (nor confirmed) is not removed."""
        path = tmp_path / spec_file_name(make_spec())
        path.write_text("{}")
        assert CdiSpecWriter(tmp_path).remove(make_spec()) is False
        assert path.read_text() == "{}"

    def test_never_removes_a_non_regular_file(self, tmp_path: Path) -> None:
        """If our file was replaced by a symlink or directory, it stays."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.write(make_spec())
        path.unlink()
        target = tmp_path / "target"
        target.write_text("keep")
        path.symlink_to(target)
        assert writer.remove(make_spec()) is False
        assert path.is_symlink()
        assert target.read_text() == "keep"

        path2 = writer.write(make_spec(name="card1"))
        path2.unlink()
        path2.mkdir()
        assert writer.remove_all() == []
        assert path2.is_dir()


class TestRefcount:
    def test_shared_spec_lives_until_the_last_holder(self, tmp_path: Path) -> None:
        """Two devices holding one spec share one file, removed with the last release."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.acquire(("gpu", "card0-0"), make_spec())
        assert writer.acquire(("gpu", "card0-1"), make_spec()) == path
        assert os.listdir(tmp_path) == [path.name]
        assert writer.release(("gpu", "card0-0")) is False
        assert path.exists()
        assert writer.release(("gpu", "card0-1")) is True
        assert not path.exists()

    def test_release_unknown_owner(self, tmp_path: Path) -> None:
        """Releasing an owner that holds nothing is a no-op."""
        assert CdiSpecWriter(tmp_path).release("nobody") is False

    def test_acquire_twice_counts_once(self, tmp_path: Path) -> None:
        """The same owner acquiring again is still one holder."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.acquire("a", make_spec())
        writer.acquire("a", make_spec())
        assert writer.release("a") is True
        assert not path.exists()

    def test_acquire_another_spec_releases_the_previous(self, tmp_path: Path) -> None:
        """An owner switching specs lets go of the old one."""
        writer = CdiSpecWriter(tmp_path)
        old = writer.acquire("a", make_spec(name="card0"))
        new = writer.acquire("a", make_spec(name="card1"))
        assert not old.exists()
        assert new.exists()

    def test_acquire_updates_changed_content(self, tmp_path: Path) -> None:
        """Re-acquiring with a changed spec of the same name rewrites the file."""
        writer = CdiSpecWriter(tmp_path)
        writer.acquire("a", make_spec())
        changed = make_spec()
        changed["devices"][0]["containerEdits"]["env"] = ["A=1"]
        path = writer.acquire("a", changed)
        assert json.loads(path.read_text()) == changed

    def test_remove_drops_holders(self, tmp_path: Path) -> None:
        """remove() deletes the file whatever its holders; their release is then a no-op."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.acquire("a", make_spec())
        assert writer.remove(make_spec()) is True
        assert not path.exists()
        assert writer.release("a") is False

    def test_remove_all(self, tmp_path: Path) -> None:
        """remove_all() removes every file written, held or not, and nothing else."""
        writer = CdiSpecWriter(tmp_path)
        held = writer.acquire("a", make_spec(name="card0"))
        written = writer.write(make_spec(name="card1"))
        foreign = tmp_path / "other-vendor.json"
        foreign.write_text("{}")
        assert sorted(writer.remove_all()) == sorted([held, written])
        assert os.listdir(tmp_path) == [foreign.name]
        assert writer.release("a") is False
        assert writer.remove_all() == []
