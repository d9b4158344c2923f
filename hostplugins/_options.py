"""Option checks the built-in plugins share; each error names its plugin in the house format."""

from __future__ import annotations

import math

from host import ConfigError

__all__ = ["as_bool", "as_float", "as_int", "as_seconds", "choice", "plugin_error"]


def plugin_error(plugin: str, message: str) -> ConfigError:
    """Return a configuration error in the house format: ``plugin 'npu': option ...``."""
    return ConfigError(f"plugin {plugin!r}: {message}")


def as_int(plugin: str, option: str, value: object) -> int:
    """Return ``value`` as an integer (an int, or a string holding one); else ConfigError."""
    if isinstance(value, bool):
        raise plugin_error(plugin, f"option {option} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise plugin_error(plugin, f"option {option} must be an integer, got {value!r}") from None


def as_float(plugin: str, option: str, value: object) -> float:
    """Return ``value`` as a number of seconds; else ConfigError (``inf``/``nan`` pass)."""
    message = f"option {option} must be a number of seconds, got {value!r}"
    if isinstance(value, bool):
        raise plugin_error(plugin, message)
    try:
        return float(value if isinstance(value, int | float) else str(value).strip())
    except ValueError:
        raise plugin_error(plugin, message) from None


def as_seconds(plugin: str, option: str, value: object) -> float:
    """Return ``value`` as a finite number of seconds; else ConfigError (no range check)."""
    seconds = as_float(plugin, option, value)
    if not math.isfinite(seconds):
        raise plugin_error(plugin, f"option {option} must be a number of seconds, got {value!r}")
    return seconds


def as_bool(plugin: str, option: str, value: object, *, empty_is_false: bool = False) -> bool:
    """Return ``value`` as a boolean (a bool, or true/false, yes/no, on/off, 1/0).

    With ``empty_is_false``, an empty string (or only blanks) also means False (the
    ``gpu`` and ``qat`` plugins' rule).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off") or (empty_is_false and text == ""):
        return False
    raise plugin_error(plugin, f"option {option} must be true or false, got {value!r}")


def choice(plugin: str, option: str, value: object, valid: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``valid``; else ConfigError listing the valid values."""
    if value not in valid:
        raise plugin_error(
            plugin,
            f"invalid value for option {option}: {value!r}; valid values: {', '.join(valid)}",
        )
    return str(value)
