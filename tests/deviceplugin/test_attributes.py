"""DeviceInfo's DRA extras: attributes and capacity are checked and frozen."""

from __future__ import annotations

from typing import Any

import pytest

from host.deviceplugin import DeviceInfo, SemVer


class TestAttributes:
    def test_typed_values_are_kept_read_only(self) -> None:
        """str, int, bool and SemVer values are stored in a read-only mapping."""
        info = DeviceInfo(attributes={"model": "X", "mem": 16, "ok": True, "v": SemVer("1.0.0")})
        assert dict(info.attributes) == {"model": "X", "mem": 16, "ok": True, "v": "1.0.0"}
        assert isinstance(info.attributes["v"], SemVer)
        with pytest.raises(TypeError):
            info.attributes["x"] = 1  # type: ignore[index]

    def test_default_is_empty(self) -> None:
        """No attributes or capacity unless given; equality still works."""
        assert DeviceInfo().attributes == {}
        assert DeviceInfo().capacity == {}
        assert DeviceInfo(capacity={"memory": "1Gi"}) == DeviceInfo(capacity={"memory": "1Gi"})

    def test_domain_qualified_names(self) -> None:
        """'<domain>/<identifier>' is allowed, e.g. the standard PCI bus ID."""
        info = DeviceInfo(attributes={"resource.kubernetes.io/pciBusID": "0000:00:02.0"})
        assert "resource.kubernetes.io/pciBusID" in info.attributes

    @pytest.mark.parametrize(
        ("name", "match"),
        [
            ("1abc", "C identifier"),
            ("a" * 33, "32"),
            ("Upper.io/x", "domain"),
            ("/x", "domain"),
            ("a" * 64 + "/x", "domain"),
            ("a-b", "C identifier"),
        ],
    )
    def test_bad_names_are_refused(self, name: str, match: str) -> None:
        """A name that is no QualifiedName fails with the name in the message."""
        with pytest.raises(ValueError, match=match) as info:
            DeviceInfo(attributes={name: 1})
        assert repr(name) in str(info.value)

    @pytest.mark.parametrize(
        ("value", "error"),
        [("x" * 65, ValueError), (2**63, ValueError), (1.5, TypeError), (None, TypeError)],
    )
    def test_bad_values_are_refused(self, value: Any, error: type[Exception]) -> None:
        """Strings over 64, ints beyond int64, floats and None are refused."""
        with pytest.raises(error, match="'a'"):
            DeviceInfo(attributes={"a": value})

    def test_semver_is_checked(self) -> None:
        """SemVer accepts semver 2.0.0 only."""
        assert SemVer("1.2.3-rc.1+build.5") == "1.2.3-rc.1+build.5"
        for bad in ("1.2", "v1.2.3", "01.2.3", "1.2.3-" + "x" * 60):
            with pytest.raises(ValueError, match="version"):
                SemVer(bad)


class TestCapacity:
    @pytest.mark.parametrize("value", ["16Gi", "1", "1.5", "100m", "1e3", "2E+2", ".5k"])
    def test_quantities(self, value: str) -> None:
        """Kubernetes quantities are accepted as given."""
        assert DeviceInfo(capacity={"memory": value}).capacity["memory"] == value

    @pytest.mark.parametrize("value", ["16GB", "", "-1", "one", "1.2.3"])
    def test_non_quantities_are_refused(self, value: str) -> None:
        """Anything else (or a negative amount) fails with the name and value."""
        with pytest.raises(ValueError, match="'memory'"):
            DeviceInfo(capacity={"memory": value})

    def test_values_must_be_strings(self) -> None:
        """An int capacity is a type error: quantities are strings."""
        with pytest.raises(TypeError, match="quantity string"):
            DeviceInfo(capacity={"memory": 16})  # type: ignore[dict-item]
