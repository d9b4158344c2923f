"""The benchmark table: one row per measured figure, with its target and a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table; ``passed`` None means the figure has no target of its own."""

    figure: str
    what: str
    measured: str
    target: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        """PASS, MISS, or a dash for an informative line."""
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "MISS"


def ms(ns: float) -> str:
    """Nanoseconds as milliseconds, 2 decimals."""
    return f"{ns / 1e6:.2f} ms"


def us(ns: float) -> str:
    """Nanoseconds as microseconds, no decimals."""
    return f"{ns / 1e3:.0f} µs"


def mib(size: float) -> str:
    """Bytes as MiB, 1 decimal."""
    return f"{size / (1024 * 1024):.1f} MiB"


def format_table(rows: Sequence[Row], title: str) -> str:
    """Render the rows as a fixed-width table under ``title``."""
    header = Row("#", "figure", "measured", "target", None)
    cells = [(r.figure, r.what, r.measured, r.target, r.verdict) for r in rows]
    head = (header.figure, header.what, header.measured, header.target, "verdict")
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(5)]
    rule = "-" * (sum(widths) + 2 * 4)
    lines = [title, rule, "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)
