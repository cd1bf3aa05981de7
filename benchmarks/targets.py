"""One format for a benchmark's target and its verdict, written from the numbers.

    Target: <what> <= 1.5: 0.991 (met)
    Target: <what> >= 0.95: 0.902 (MISSED)

``target`` writes the line; ``read`` finds every such line in a report, so a test can check
that each verdict follows from the number beside it.
"""

from __future__ import annotations

import re

LINE = re.compile(
    r"^Target: (?P<what>.+?) (?P<op><=|>=) (?P<limit>[-+0-9.e]+): (?P<value>[-+0-9.e]+|nan) "
    r"\((?P<verdict>met|MISSED)\)",
    re.M,
)


def met(value: float, op: str, limit: float) -> bool:
    return value <= limit if op == "<=" else value >= limit


def target(what: str, value: float, op: str, limit: float) -> str:
    """The line for a target ``value op limit`` (op is "<=" or ">="); NaN misses."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be <= or >=, got {op!r}")
    verdict = "met" if met(value, op, limit) else "MISSED"
    return f"Target: {what} {op} {limit:g}: {value:.4g} ({verdict})"


def read(text: str) -> list[dict]:
    """Every target line of ``text``: what, op, limit, value, and whether it says met."""
    return [
        {
            "what": m["what"],
            "op": m["op"],
            "limit": float(m["limit"]),
            "value": float(m["value"]),
            "met": m["verdict"] == "met",
        }
        for m in LINE.finditer(text)
    ]
