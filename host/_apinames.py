"""Kubernetes API name and value rules that DeviceInfo, the DRA publisher and the fakes share.

Each check returns ``None`` for a valid value, or a message in the API server's words
(``k8s.io/apimachinery/pkg/util/validation``, ``k8s.io/apimachinery/pkg/api/resource``,
``k8s.io/api/resource/v1`` validation), so the caller can prefix it with what it checked.
"""

from __future__ import annotations

import re

__all__ = [
    "C_IDENTIFIER_MAX",
    "DNS_LABEL_MAX",
    "DNS_SUBDOMAIN_MAX",
    "DRIVER_NAME_MAX",
    "QUALIFIED_DOMAIN_MAX",
    "c_identifier_error",
    "dns_label_error",
    "dns_subdomain_error",
    "label_name_error",
    "label_value_error",
    "qualified_name_error",
    "quantity_error",
    "semver_error",
]

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
DRIVER_NAME_MAX = 63
C_IDENTIFIER_MAX = 32
"""``DeviceMaxIDLength``: the identifier part of an attribute or capacity name."""
QUALIFIED_DOMAIN_MAX = 63
"""``DeviceMaxDomainLength``: the domain part of an attribute or capacity name."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?"
)
# resource.Quantity: <sign><number><suffix>, suffix binary SI, decimal SI or an exponent.
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")


def dns_label_error(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 label (lowercase alphanumerics and '-', <= 63)."""
    if len(value) > DNS_LABEL_MAX:
        return f"must be no more than {DNS_LABEL_MAX} characters"
    if not _DNS_LABEL.fullmatch(value):
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character"
        )
    return None


def dns_subdomain_error(value: str, max_length: int = DNS_SUBDOMAIN_MAX) -> str | None:
    """Why ``value`` is not an RFC 1123 subdomain of at most ``max_length`` characters."""
    if len(value) > max_length:
        return f"must be no more than {max_length} characters"
    if not _DNS_SUBDOMAIN.fullmatch(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def c_identifier_error(value: str) -> str | None:
    """Why ``value`` is not a C identifier of at most 32 characters."""
    if len(value) > C_IDENTIFIER_MAX:
        return f"must be no more than {C_IDENTIFIER_MAX} characters"
    if not _C_IDENTIFIER.fullmatch(value):
        return (
            "a valid C identifier must start with alphabetic character or '_', "
            "followed by a string of alphanumeric characters or '_'"
        )
    return None


def qualified_name_error(value: str) -> str | None:
    """Why ``value`` is not a device attribute/capacity name: ``[<domain>/]<C identifier>``."""
    domain, slash, ident = value.rpartition("/")
    if slash:
        if not domain:
            return "the domain must not be empty"
        error = dns_subdomain_error(domain, QUALIFIED_DOMAIN_MAX)
        if error is not None:
            return f"the domain {error}"
    error = c_identifier_error(ident)
    return None if error is None else f"the name {error}"


def label_name_error(value: str) -> str | None:
    """Why ``value`` is not a label key: ``[<DNS subdomain>/]<name of at most 63>``."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        error = dns_subdomain_error(prefix)
        if not prefix or error is not None:
            return f"prefix part {error or 'must be non-empty'}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _LABEL_NAME.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a label value (empty, or <= 63 of [-_.A-Za-z0-9] alnum-bounded)."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if value and not _LABEL_NAME.fullmatch(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


def semver_error(value: str) -> str | None:
    """Why ``value`` is not a semantic version 2.0.0 string."""
    if not _SEMVER.fullmatch(value):
        return "must be a string compatible with semver.org spec 2.0.0"
    return None


def quantity_error(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes quantity (``16Gi``, ``1.5``, ``100m``, ``1e3``)."""
    if not _QUANTITY.fullmatch(value):
        return (
            "quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    return None
