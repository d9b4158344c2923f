"""Plugin options and per-plugin configuration records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["ConfigError", "Option", "PluginConfig"]


class ConfigError(Exception):
    """A person's configuration mistake: the host prints the message and exits with 2.

    Raise it from a hook (``devplugin_scanners``) when an option value or combination is
    invalid; the message should name the option and the bad value.
    """


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts, set with ``--set PLUGIN.NAME=VALUE`` or the config file.

    ``type`` parses a string value (from the command line or environment); when omitted
    it follows the default's type (bool, int, float, str, list of str).
    """

    name: str
    default: Any = None
    help: str = ""
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None


@dataclass(frozen=True)
class PluginConfig:
    """What one plugin's hooks receive: its own option values and the host's roots."""

    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sysfs_root: Path = Path("/sys")
    devfs_root: Path = Path("/dev")
