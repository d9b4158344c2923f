"""The fake kubelet's resource-name check and the plugin side's agree with kubelet's answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host.deviceplugin._names import resource_name_error
from host.testing._kubelet_names import is_extended_resource_name

# (name, what kubelet's IsExtendedResourceName answers)
KUBELET_ANSWERS = [
    ("nvidia.com/gpu", True),
    ("example.com/GPU", True),
    ("k8s.io/x", True),
    ("a/b", True),
    ("a-b.c/x_y.z-1", True),
    ("x/" + "a" * 63, True),
    ("a" * 244 + "/x", True),
    ("gpu", False),
    ("Example.com/gpu", False),
    ("example_com/gpu", False),
    ("example.com/a/b", False),
    ("example.com/", False),
    ("/gpu", False),
    ("example.com/-x", False),
    ("example.com/x-", False),
    ("kubernetes.io/x", False),
    ("foo.kubernetes.io/x", False),
    ("requests.example.com/x", False),
    ("x/" + "a" * 64, False),
    ("a" * 245 + "/x", False),
    ("a.com/gpu\n", False),
    ("a.com\n/gpu", False),
    ("-a.com/gpu", False),
    ("a..com/gpu", False),
    ("a.com/g pu", False),
    ("", False),
]


class TestResourceNames:
    @pytest.mark.parametrize(("name", "accepted"), KUBELET_ANSWERS)
    def test_both_sides_answer_as_kubelet(self, name: str, accepted: bool) -> None:
        """The fake kubelet and the plugin side each give kubelet's answer."""
        assert is_extended_resource_name(name) is accepted
        assert (resource_name_error(name) is None) is accepted

    @given(
        st.text(alphabet="abAB09-_./\n :", max_size=20).map(lambda s: s + "/x")
        | st.text(alphabet="ab09-_./", max_size=12).map(lambda s: "a.com/" + s)
    )
    def test_sides_agree_on_any_name(self, name: str) -> None:
        """Written apart, the two checks never disagree."""
        assert is_extended_resource_name(name) is (resource_name_error(name) is None)
