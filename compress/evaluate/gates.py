"""Quality gates: `kld.mean<=0.05`, `ppl.increase_pct<=5`, `tasks.*.recovery>=0.97`.

A gate is a dotted path into an artifact's metrics, a comparison and a number. `*` matches every
key at its level, and all matches must pass. Parsing happens before any model is loaded, so a typo
is a usage error (exit 2), not a failed gate after an hour of evaluation; so does checking the path
against `metric_schema`, the keys the harness will write for the metrics and tasks requested (a
misspelled key or an unmeasured metric would otherwise only fail, as "not measured", at the end).
"""

from __future__ import annotations

import copy
import difflib
import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from compress.errors import CompressError

# --- what each metric writes: the schema gates are checked against ----------------------------------
#
# One declaration per producer; tests/test_eval.py runs every producer (the harness on a tiny model
# with all metrics, and `DivergenceAccumulator.summary`) and asserts it writes exactly these keys,
# so a renamed or added key fails a test instead of silently making gates "not measured".

#: A leaf a gate can compare (None when not measurable, e.g. CUDA memory on a CPU).
NUMBER = "number"
#: A leaf that describes rather than measures (a device, a metric's name): not gateable.
LABEL = "label"
Schema = dict[str, Any]  # key -> NUMBER, LABEL or a nested Schema

#: `harness._ppl_metrics` (from `perplexity.Perplexity`); `increase_pct` against the baseline.
PPL_KEYS: Schema = dict.fromkeys(("value", "nll", "stderr_nll", "tokens", "increase_pct"), NUMBER)
#: `divergence.DivergenceAccumulator.summary`.
KLD_KEYS: Schema = dict.fromkeys(("mean", "median", "p99", "max", "tokens"), NUMBER)
DELTA_P_KEYS: Schema = dict.fromkeys(("mean", "p1", "p99"), NUMBER)
#: `tasks._summary`, plus `recovery` (`harness._add_recovery`), per task name.
TASK_KEYS: Schema = {
    "metric": LABEL,
    "score": NUMBER,
    "stderr": NUMBER,
    "higher_is_better": LABEL,
    "samples": NUMBER,
    "recovery": NUMBER,
}
#: `harness._finish_metrics`.
MEMORY_KEYS: Schema = dict.fromkeys(("weight_bytes", "peak_rss_bytes", "peak_cuda_bytes"), NUMBER)
SIZE_KEYS: Schema = dict.fromkeys(
    ("disk_bytes", "weight_bytes", "tensor_bytes", "parameters", "bits_per_weight"), NUMBER
)
COST_KEYS: Schema = dict.fromkeys(("usd_per_1m_tokens", "price_per_hour", "decode_tok_s"), NUMBER)
#: The baseline's figures an artifact's `speed.baseline` repeats (`harness._measure_speed`).
SPEED_BASELINE_KEYS = ("prefill_tok_s", "decode_tok_s", "decode_spread_pct")


def speed_keys(batch_sizes: Iterable[int]) -> Schema:
    """`speed._summarize` for these decode batch sizes, plus what `harness._measure_speed` adds
    for an artifact: the baseline timed beside it and the ratios to it (`speed.speed_ratios`)."""
    batches = [str(batch) for batch in dict.fromkeys(batch_sizes)]
    per_batch = dict.fromkeys(batches, NUMBER)
    speed: Schema = {
        "device": LABEL,
        "prefill_tok_s": NUMBER,
        "ttft_ms": NUMBER,
        "decode_tok_s": per_batch,
        "decode_spread_pct": dict(per_batch),
        "head_share_pct": dict(per_batch),
        "latency_ms": dict.fromkeys(("p50", "p95", "p99"), NUMBER),
        "prompt_tokens": NUMBER,
        "new_tokens": NUMBER,
        "repeats": NUMBER,
        "threads": NUMBER,
        "loadavg_1m": NUMBER,
    }
    speed["baseline"] = {key: speed[key] for key in SPEED_BASELINE_KEYS}
    speed["vs_baseline"] = {"prefill": NUMBER, **{f"decode_{batch}": NUMBER for batch in batches}}
    return speed


#: The metrics a suite can ask for, and the top-level keys of `metrics` each one writes.
METRIC_ROOTS: dict[str, tuple[str, ...]] = {
    "ppl": ("ppl",),
    "kld": ("kld", "same_top1", "delta_p"),
    "tasks": ("tasks",),
    "speed": ("speed",),
    "memory": ("memory",),
    "size": ("size",),
    "cost": ("cost",),
}
#: Top-level metric names a gate may refer to (the keys of a result's `metrics`).
GATEABLE_ROOTS = tuple(root for roots in METRIC_ROOTS.values() for root in roots)


@dataclass(frozen=True)
class GateSchema:
    """The keys an artifact's result will hold (`tree`), and why each absent root will be absent."""

    tree: Schema
    absent: dict[str, str]


def metric_schema(
    metrics: Collection[str],
    tasks: Sequence[str] = (),
    batch_sizes: Iterable[int] = (1, 8),
    priced: bool = False,
) -> GateSchema:
    """What `harness._evaluate_model` writes for an artifact under these settings: `ppl` whenever
    the scoring pass runs (for `ppl` or `kld`), `tasks` per requested task, `cost` only with a
    price and measured speed."""
    measured = ", ".join(metrics) or "none"
    shapes: Schema = {
        "ppl": PPL_KEYS,
        "kld": KLD_KEYS,
        "same_top1": NUMBER,
        "delta_p": DELTA_P_KEYS,
        "tasks": {name: TASK_KEYS for name in dict.fromkeys(tasks)},
        "speed": speed_keys(batch_sizes),
        "memory": MEMORY_KEYS,
        "size": SIZE_KEYS,
        "cost": COST_KEYS,
    }
    tree: Schema = {}
    absent: dict[str, str] = {}
    for metric, roots in METRIC_ROOTS.items():
        for root in roots:
            if metric in metrics or (root == "ppl" and "kld" in metrics):  # the KLD pass scores ppl
                tree[root] = copy.deepcopy(shapes[root])
            else:
                gives = "" if root == metric else f" (which gives {root})"
                absent[root] = f"metric '{metric}'{gives} is not measured (metrics: {measured})"
    if "tasks" in tree and not tasks:
        del tree["tasks"]
        absent["tasks"] = "no lm-eval tasks are requested; name them with --tasks or the suite's `tasks`"
    if "cost" in tree and not ("speed" in metrics and priced):
        del tree["cost"]
        absent["cost"] = "metric 'cost' needs the speed metric and a price per hour (--price-per-hour)"
    return GateSchema(tree, absent)


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
    if "" in parts:
        raise CompressError(f"gate '{expression}' has an empty key in '{path}'; write e.g. kld.mean<=0.05")
    if parts[0] not in GATEABLE_ROOTS:
        raise CompressError(
            f"gate '{expression}' names unknown metric '{parts[0]}'; use one of {', '.join(GATEABLE_ROOTS)}"
        )
    partial = next((part for part in parts if "*" in part and part != "*"), None)
    if partial is not None:
        raise CompressError(
            f"gate '{expression}': '*' stands for a whole key (tasks.*.recovery), not part of '{partial}'"
        )
    return Gate(expression.strip(), parts, op, float(number))


def _keys(node: Schema) -> str:
    return ", ".join(node) or "none"


def check_gate_path(gate: Gate, schema: GateSchema) -> None:
    """Refuse a gate whose path names nothing the evaluation will measure, or a value that is not a
    number, with what is there instead; every key a `*` matches must lead to a number."""
    expression = gate.expression
    root = gate.path[0]
    if root not in schema.tree:
        reason = schema.absent.get(root, f"'{root}' is not measured")
        raise CompressError(f"gate '{expression}': {reason}")
    _check_path(expression, schema.tree[root], gate.path[1:], (root,))


def _check_path(expression: str, node: Any, rest: tuple[str, ...], seen: tuple[str, ...]) -> None:
    where = ".".join(seen)
    if not rest:
        if isinstance(node, dict) and node.get("value") == NUMBER:
            return  # `ppl<=12` reads `ppl.value`
        if isinstance(node, dict):
            raise CompressError(
                f"gate '{expression}': '{where}' holds several values; name one: {_keys(node)}"
            )
        if node == LABEL:
            raise CompressError(f"gate '{expression}': '{where}' is a label, not a number")
        return
    head, tail = rest[0], rest[1:]
    if not isinstance(node, dict):
        raise CompressError(f"gate '{expression}': '{where}' is a single value with no key '{head}'")
    if head == "*":
        if not node:
            raise CompressError(f"gate '{expression}': '{where}.*' matches nothing")
        for key, child in node.items():
            _check_path(expression, child, tail, (*seen, key))
        return
    if head not in node:
        close = difflib.get_close_matches(head, list(node), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        if seen == ("tasks",):
            raise CompressError(
                f"gate '{expression}': task '{head}' is not among the requested tasks{hint}; "
                f"requested: {_keys(node)}"
            )
        raise CompressError(
            f"gate '{expression}': '{where}' has no key '{head}'{hint}; available: {_keys(node)}"
        )
    _check_path(expression, node[head], tail, (*seen, head))


def check_gates(expressions: Iterable[str], schema: GateSchema) -> list[Gate]:
    """Parse every gate and check its path against what will be measured, before any work."""
    gates = [parse_gate(expression) for expression in expressions]
    for gate in gates:
        check_gate_path(gate, schema)
    return gates


def _resolve(metrics: Any, path: tuple[str, ...], prefix: str = "") -> dict[str, float | None]:
    """Every value the path matches, by its concrete dotted name; None where nothing was measured."""
    if not path:
        if isinstance(metrics, dict) and "value" in metrics:  # `ppl` stands for `ppl.value`
            metrics = metrics["value"]
        number = isinstance(metrics, (int, float)) and not isinstance(metrics, bool)
        return {prefix: float(metrics) if number else None}
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
