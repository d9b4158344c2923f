"""Kubelet's own check of a Register request's resource name, written apart from the plugin side.

A transcription of kubelet's code path, kept separate from
:mod:`host.deviceplugin._names` on purpose: a fake kubelet sharing the plugin's
function could never catch that function's bug. Sources:
``pkg/apis/core/v1/helper/helpers.go`` (``IsExtendedResourceName``,
``IsNativeResource``, ``IsPrefixedNativeResource``) and apimachinery
``pkg/util/validation`` (``IsQualifiedName``, ``IsDNS1123Subdomain``).
"""

from __future__ import annotations

import re

__all__ = ["is_extended_resource_name", "qualified_name_errors"]

RESOURCE_DEFAULT_NAMESPACE_PREFIX = "kubernetes.io/"  # v1.ResourceDefaultNamespacePrefix
DEFAULT_RESOURCE_REQUESTS_PREFIX = "requests."  # v1.DefaultResourceRequestsPrefix

_QNAME_CHAR = "[A-Za-z0-9]"
_QNAME_EXT_CHAR = "[-A-Za-z0-9_.]"
# \A and \Z as Go anchors: Python's $ would also match before a trailing newline.
_QUALIFIED_NAME_RE = re.compile(f"\\A({_QNAME_CHAR}{_QNAME_EXT_CHAR}*)?{_QNAME_CHAR}\\Z")
_QUALIFIED_NAME_MAX_LENGTH = 63
_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(f"\\A{_DNS1123_LABEL}(\\.{_DNS1123_LABEL})*\\Z")
_DNS1123_SUBDOMAIN_MAX_LENGTH = 253


def _is_prefixed_native_resource(name: str) -> bool:
    return RESOURCE_DEFAULT_NAMESPACE_PREFIX in name


def _is_native_resource(name: str) -> bool:
    return "/" not in name or _is_prefixed_native_resource(name)


def _dns1123_subdomain_errors(value: str) -> list[str]:
    errors = []
    if len(value) > _DNS1123_SUBDOMAIN_MAX_LENGTH:
        errors.append(f"must be no more than {_DNS1123_SUBDOMAIN_MAX_LENGTH} characters")
    if not _DNS1123_SUBDOMAIN_RE.match(value):
        errors.append("a lowercase RFC 1123 subdomain")
    return errors


def qualified_name_errors(value: str) -> list[str]:
    """Apimachinery ``IsQualifiedName``: the list of what is wrong (empty when valid)."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += ["prefix part " + e for e in _dns1123_subdomain_errors(prefix)]
    else:
        return ["a qualified name with an optional DNS subdomain prefix and '/'"]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > _QUALIFIED_NAME_MAX_LENGTH:
        errors.append(f"name part must be no more than {_QUALIFIED_NAME_MAX_LENGTH} characters")
    if not _QUALIFIED_NAME_RE.match(name):
        errors.append("name part must consist of alphanumeric characters, '-', '_' or '.'")
    return errors


def is_extended_resource_name(name: str) -> bool:
    """``v1helper.IsExtendedResourceName``: what kubelet's Register accepts."""
    if _is_native_resource(name) or name.startswith(DEFAULT_RESOURCE_REQUESTS_PREFIX):
        return False
    name_for_quota = f"{DEFAULT_RESOURCE_REQUESTS_PREFIX}{name}"
    return not qualified_name_errors(name_for_quota)
