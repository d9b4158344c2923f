"""DeviceClass CEL selectors evaluated against ResourceSlice devices, for the fake scheduler.

The ``device`` variable is built as the DRA CEL environment defines it
(``k8s.io/dynamic-resource-allocation/cel``): ``device.driver``,
``device.attributes[<domain>].<name>`` and ``device.capacity[<domain>].<name>``, an
unqualified attribute or capacity name belonging to the driver's own domain.

The selector this host generates (:func:`host.dra._deviceclasses.device_class_selector`,
``device.driver == "D" && device.attributes["D"].type == "T"``) is evaluated directly,
so ``simulate`` needs no CEL library; any other expression goes to ``cel-python`` (the
``test`` extra), imported on first use. The tests check that both agree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SelectorError", "Selectors", "cel_device"]

_STRING = r'"((?:[^"\\]|\\["\\])*)"'
_GENERATED = re.compile(
    rf"device\.driver == {_STRING} && device\.attributes\[{_STRING}\]\.type == {_STRING}"
)


class SelectorError(Exception):
    """A selector that does not compile, or fails on a device (allocation aborts)."""


def _unquote(text: str) -> str:
    return re.sub(r"\\([\"\\])", r"\1", text)


def cel_device(driver: str, device: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``device`` variable of a DRA CEL selector for one slice device."""
    attributes: dict[str, dict[str, Any]] = {driver: {}}
    for name, value in (device.get("attributes") or {}).items():
        domain, _, ident = name.rpartition("/")
        ((_, item),) = value.items()
        attributes.setdefault(domain or driver, {})[ident] = item
    capacity: dict[str, dict[str, Any]] = {driver: {}}
    for name, value in (device.get("capacity") or {}).items():
        domain, _, ident = name.rpartition("/")
        capacity.setdefault(domain or driver, {})[ident] = value.get("value")
    return {"driver": driver, "attributes": attributes, "capacity": capacity}


def _celpy() -> Any:
    try:
        import celpy
    except ImportError as exc:
        raise ImportError(
            f"evaluating this DeviceClass selector needs cel-python ({exc}); install it, "
            "e.g. pip install 'devplugin-host[test]'"
        ) from exc
    return celpy


@functools.lru_cache(maxsize=256)
def _program(expression: str) -> Any:
    """``expression`` compiled by cel-python (parsing costs milliseconds: each one once)."""
    celpy = _celpy()
    environment = celpy.Environment()
    try:
        return environment.program(environment.compile(expression))
    except celpy.CELParseError as exc:
        raise SelectorError(f"{expression!r} does not compile: {exc}") from exc


class _Generated:
    """The host's own selector form, evaluated without a CEL library."""

    def __init__(self, driver: str, domain: str, dev_type: str) -> None:
        self.driver, self.domain, self.dev_type = driver, domain, dev_type

    def evaluate(self, device: Mapping[str, Any]) -> bool:
        if device["driver"] != self.driver:
            return False  # `false && x` is false whatever x does
        attributes = device["attributes"].get(self.domain, {})
        if "type" not in attributes:
            raise SelectorError(f"no such key: type (device of driver {self.driver})")
        return bool(attributes["type"] == self.dev_type)


class Selectors:
    """A DeviceClass's selectors, ready to test devices: all of them must hold."""

    def __init__(self, device_class: Mapping[str, Any], *, fast: bool = True) -> None:
        self.name = device_class["metadata"]["name"]
        self._checks: list[tuple[str, Any]] = []
        for selector in (device_class.get("spec") or {}).get("selectors") or ():
            expression = selector["cel"]["expression"]
            found = _GENERATED.fullmatch(expression) if fast else None
            if found is not None:
                driver, domain, dev_type = (_unquote(part) for part in found.groups())
                self._checks.append((expression, _Generated(driver, domain, dev_type)))
            else:
                try:
                    self._checks.append((expression, _program(expression)))
                except SelectorError as exc:
                    raise SelectorError(f"DeviceClass {self.name}: {exc}") from exc

    def match(self, driver: str, device: Mapping[str, Any]) -> bool:
        """Whether every selector holds for ``device``; SelectorError for a runtime error."""
        variable = cel_device(driver, device)
        for expression, check in self._checks:
            try:
                if isinstance(check, _Generated):
                    result: Any = check.evaluate(variable)
                else:
                    result = self._evaluate(check, variable)
            except SelectorError as exc:
                raise SelectorError(f"DeviceClass {self.name}: {expression!r}: {exc}") from exc
            if not result:
                return False
        return True

    @staticmethod
    def _evaluate(program: Any, variable: dict[str, Any]) -> bool:
        celpy = _celpy()
        try:
            result = program.evaluate({"device": celpy.json_to_cel(variable)})
        except celpy.CELEvalError as exc:
            raise SelectorError(str(exc)) from exc
        if isinstance(result, celpy.CELEvalError):
            raise SelectorError(str(result))
        return bool(result is True or result == celpy.celtypes.BoolType(True))
