"""Side-by-side comparison of eval results: rows of plain numbers, rendered four ways, and a plot.

`comparison_rows` is the single place that decides the columns; the terminal table, markdown, CSV
and JSON are renderings of the same rows, so they can never disagree.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from compress.evaluate.results import ModelResult
from compress.render import format_bytes

FORMATS = ("table", "markdown", "json", "csv")
SORT_KEYS = ("name", "size", "ppl", "kld", "speed")


def _get(metrics: dict[str, Any], *path: str) -> Any:
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _decode_speed(result: ModelResult) -> float | None:
    return _get(result.metrics, "speed", "decode_tok_s", "1")


def _speed_ratio(result: ModelResult, speed: float | None, base_speed: float | None) -> float | None:
    """Decode speed against the baseline: from the side-by-side rounds when the harness timed the
    two together (robust to load that drifts between runs), else from the two stored figures."""
    paired = _get(result.metrics, "speed", "vs_baseline", "decode_1")
    if paired is not None:
        return paired
    return speed / base_speed if speed and base_speed else None


def comparison_rows(results: list[ModelResult]) -> list[dict[str, Any]]:
    """One row per result, baseline first, with ratios against the baseline where it has one."""
    baseline = next((r for r in results if r.role == "baseline"), None)
    base_size = _get(baseline.metrics, "size", "weight_bytes") if baseline else None
    base_speed = _decode_speed(baseline) if baseline else None
    base_ppl = _get(baseline.metrics, "ppl", "value") if baseline else None
    rows = []
    for result in results:
        m = result.metrics
        size = _get(m, "size", "weight_bytes")
        speed = _decode_speed(result)
        ppl = _get(m, "ppl", "value")
        row: dict[str, Any] = {
            "name": result.name,
            "role": result.role,
            "method": result.method or ("baseline" if result.role == "baseline" else "-"),
            "bits_per_weight": _get(m, "size", "bits_per_weight"),
            "size_bytes": size,
            "smaller_x": base_size / size if base_size and size else None,
            "ppl": ppl,
            "ppl_delta_pct": (ppl / base_ppl - 1) * 100 if ppl and base_ppl else None,
            "kld_mean": _get(m, "kld", "mean"),
            "same_top1": m.get("same_top1"),
            "decode_tok_s": speed,
            "speed_x": _speed_ratio(result, speed, base_speed),
            "head_share_pct": _get(m, "speed", "head_share_pct", "1"),
            "usd_per_1m_tokens": _get(m, "cost", "usd_per_1m_tokens"),
            "gates": f"{sum(g['passed'] for g in result.gates)}/{len(result.gates)}"
            if result.gates
            else None,
            "gates_passed": result.passed,
        }
        for task, values in (m.get("tasks") or {}).items():
            row[f"task:{task}"] = values.get("score")
        rows.append(row)
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """Baseline stays first; the rest sorted by `key` (size, ppl, kld ascending; speed descending)."""
    if not key:
        return rows
    column = {"name": "name", "size": "size_bytes", "ppl": "ppl", "kld": "kld_mean", "speed": "decode_tok_s"}[
        key
    ]
    head = [r for r in rows if r["role"] == "baseline"]
    rest = [r for r in rows if r["role"] != "baseline"]
    missing = float("inf")
    rest.sort(key=lambda r: missing if r[column] is None else r[column], reverse=key == "speed")
    return head + rest


def _task_columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({key for row in rows for key in row if key.startswith("task:")})


def _cells(row: dict[str, Any], tasks: list[str]) -> list[str]:
    def number(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def small(value) -> str:  # KLD of a good artifact is 1e-6, which ".5f" would show as 0
        return "-" if value is None else format(value, ".5f" if abs(value) >= 1e-3 or value == 0 else ".2e")

    size = format_bytes(row["size_bytes"]) if row["size_bytes"] else "-"
    if row["smaller_x"] and row["role"] != "baseline":
        size += f" (÷{row['smaller_x']:.2f})"
    ppl = number(row["ppl"], ".3f")
    if row["ppl_delta_pct"] is not None and row["role"] != "baseline":
        ppl += f" ({row['ppl_delta_pct']:+.2f}%)"
    speed = number(row["decode_tok_s"], ".1f")
    if row["speed_x"] and row["role"] != "baseline":
        speed += f" ({row['speed_x']:.2f}×)"
    if row.get("head_share_pct") is not None:  # the output head's share of a decode step
        speed += f" head {row['head_share_pct']:.0f}%"
    return [
        row["name"],
        row["method"],
        number(row["bits_per_weight"], ".2f"),
        size,
        ppl,
        small(row["kld_mean"]),
        number(row["same_top1"], ".4f"),
        *[number(row[t], ".4f") if t in row else "-" for t in tasks],
        speed,
        number(row["usd_per_1m_tokens"], ".2f"),
        row["gates"] or "-",
    ]


def _headers(tasks: list[str]) -> list[str]:
    return [
        "model",
        "method",
        "bits/w",
        "size (÷ smaller)",
        "ppl (Δ)",
        "KLD mean",
        "same top-1",
        *[t.removeprefix("task:") for t in tasks],
        "decode tok/s (×)",
        "$/1M tok",
        "gates",
    ]


def rich_table(rows: list[dict[str, Any]], title: str = "compress compare") -> Table:
    tasks = _task_columns(rows)
    table = Table(title=title)
    for index, header in enumerate(_headers(tasks)):
        table.add_column(header, justify="left" if index < 2 else "right")
    for row in rows:
        style = "bold" if row["role"] == "baseline" else ("red" if not row["gates_passed"] else None)
        table.add_row(*_cells(row, tasks), style=style)
    return table


def markdown_table(rows: list[dict[str, Any]]) -> str:
    tasks = _task_columns(rows)
    headers = _headers(tasks)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row, tasks)) + " |" for row in rows]
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], fmt: str) -> str | Table:
    """The rows in one of FORMATS (a rich Table for `table`, text for the others)."""
    if fmt == "table":
        return rich_table(rows)
    if fmt == "markdown":
        return markdown_table(rows)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def pareto_front(points: list[tuple[float, float]], maximize_x: bool = False) -> list[int]:
    """Indices of points no other point beats on both axes (lower y is better; x lower unless maximized)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (other_x, other_y) in enumerate(points):
            if j == i:
                continue
            better_x = other_x >= x if maximize_x else other_x <= x
            if better_x and other_y <= y and (other_x, other_y) != (x, y):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Quality (KLD mean, else ppl) against size and against speed, the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality_key = "kld_mean" if any(r["kld_mean"] for r in rows if r["role"] != "baseline") else "ppl"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, x_key, x_label, maximize in (
        (axes[0], "size_bytes", "weight size (MiB)", False),
        (axes[1], "decode_tok_s", "decode tokens/s (batch 1)", True),
    ):
        usable = [r for r in rows if r[x_key] is not None and r[quality_key] is not None]
        scale = 1 / 2**20 if x_key == "size_bytes" else 1.0
        points = [(r[x_key] * scale, r[quality_key]) for r in usable]
        front = set(pareto_front(points, maximize_x=maximize))
        for index, (row, (x, y)) in enumerate(zip(usable, points, strict=True)):
            marker = "*" if index in front else "o"
            axis.scatter([x], [y], marker=marker, s=140 if index in front else 50, zorder=3)
            axis.annotate(row["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ordered = sorted((points[i] for i in front), key=lambda p: p[0])
        if len(ordered) > 1:
            axis.plot(*zip(*ordered, strict=True), linestyle="--", color="grey", label="Pareto front")
            axis.legend()
        axis.set_xlabel(x_label)
        axis.set_ylabel("KLD mean vs baseline" if quality_key == "kld_mean" else "perplexity")
        axis.grid(alpha=0.3)
    figure.suptitle("compress: quality against size and speed (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
