"""Quality gates: `kld.mean<=0.05`, `ppl.increase_pct<=5`, `tasks.*.recovery>=0.97`.

A gate is a dotted path into an artifact's metrics, a comparison and a number. `*` matches every
key at its level, and all matches must pass. Parsing happens before any model is loaded, so a typo
is a usage error (exit 2), not a failed gate after an hour of evaluation.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from compress.errors import CompressError

#: Top-level metric names a gate may refer to (the keys of a result's `metrics`).
GATEABLE_ROOTS = ("ppl", "kld", "same_top1", "delta_p", "tasks", "speed", "memory", "size", "cost")

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}
_GATE = re.compile(
    r"^\s*([A-Za-z_*][\w.*-]*)\s*(<=|>=|==|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    expression: str
    path: tuple[str, ...]
    op: str
    threshold: float


@dataclass(frozen=True)
class GateOutcome:
    gate: str
    passed: bool
    values: dict[str, float | None]  # measured value per matched path (None: not measured)
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_gate(expression: str) -> Gate:
    """Parse one gate, or raise a one-line error that shows the expected form."""
    match = _GATE.match(expression)
    if not match:
        raise CompressError(f"gate '{expression}' does not parse; write METRIC<=NUMBER, e.g. kld.mean<=0.05")
    path, op, number = match.groups()
    parts = tuple(path.split("."))
    if parts[0] not in GATEABLE_ROOTS:
        raise CompressError(
            f"gate '{expression}' names unknown metric '{parts[0]}'; use one of {', '.join(GATEABLE_ROOTS)}"
        )
    return Gate(expression.strip(), parts, op, float(number))


def _resolve(metrics: Any, path: tuple[str, ...], prefix: str = "") -> dict[str, float | None]:
    """Every value the path matches, by its concrete dotted name; None where nothing was measured."""
    if not path:
        return {prefix: float(metrics) if isinstance(metrics, (int, float)) else None}
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(metrics, dict) or not metrics:
            return {f"{prefix}.*" if prefix else "*": None}
        found: dict[str, float | None] = {}
        for key, value in metrics.items():
            found.update(_resolve(value, rest, f"{prefix}.{key}" if prefix else key))
        return found
    name = f"{prefix}.{head}" if prefix else head
    if not isinstance(metrics, dict) or head not in metrics:
        return {".".join([name, *rest]): None}
    return _resolve(metrics[head], rest, name)


def check_gate(gate: Gate, metrics: dict[str, Any]) -> GateOutcome:
    """Compare every matched value with the threshold; a value that was not measured fails."""
    values = _resolve(metrics, gate.path)
    compare = _OPERATORS[gate.op]
    failures = [
        name
        for name, value in values.items()
        if value is None or math.isnan(value) or not compare(value, gate.threshold)
    ]
    shown = ", ".join(f"{name}={'not measured' if v is None else f'{v:.6g}'}" for name, v in values.items())
    verdict = "pass" if not failures else "FAIL"
    return GateOutcome(gate.expression, not failures, values, f"{verdict}: {gate.expression} ({shown})")
