"""Rich renderings of library results for the terminal (the CLI's only formatting code)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table


def kernel_counts(layers: dict[str, int], notes: dict[str, int]) -> str:
    """`210 int4pack-cpu (30 with groups of 86 padded to 128)`: layers per kernel, then why some differ."""
    text = ", ".join(f"{count} {kernel}" for kernel, count in layers.items())
    reasons = "; ".join(f"{count} with {note}" for note, count in notes.items())
    return text + (f" ({reasons})" if reasons else "")


def format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int | None) -> str:
    if count is None:
        return "-"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= threshold:
            return f"{count / threshold:.2f}{suffix}"
    return str(count)


def _key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def _lineage_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    lineage = manifest["lineage"]
    source = lineage["source"]
    rows = [("source model", f"{source.get('reference')}  sha256 {str(source.get('sha256'))[:12]}")]
    if source.get("revision"):
        rows.append(("source revision", source["revision"]))
    parent = lineage.get("parent")
    while parent:
        rows.append(("parent", f"{parent.get('path')}  ({parent.get('method')})"))
        parent = (parent.get("lineage") or {}).get("parent")
    return rows


def _kind(info: dict[str, Any]) -> str:
    if info["is_artifact"]:
        return "compress artifact"
    if info["model_type"] == "gguf":
        return "GGUF file (no compress.json)"
    return "model directory (no compress.json)"


def inspect_view(info: dict[str, Any]) -> Group:
    """`compress inspect`: what the directory is, its size, and (for artifacts) how it was made."""
    rows = [
        ("path", info["path"]),
        ("kind", _kind(info)),
        ("architecture", f"{info['architecture']} ({info['model_type']})"),
        ("parameters", f"{format_count(info['parameters'])} ({info['parameters']:,})"),
        (
            "weights",
            f"{format_bytes(info['weight_bytes'])} in {len(info['weight_files'])} "
            f"{'GGUF' if info['model_type'] == 'gguf' else 'safetensors'} file(s)",
        ),
        ("bits per weight", f"{info['bits_per_weight']}"),
        ("disk", format_bytes(info["disk_bytes"])),
        ("dtypes", ", ".join(f"{k}: {format_count(v)}" for k, v in info["parameters_by_dtype"].items())),
    ]
    if info.get("quantization_config"):
        rows.append(("quantization", str(info["quantization_config"].get("quant_method"))))
    if info.get("quantized_layers"):
        packed = info["quantized_layers"]
        rows.append(
            (
                "quantized layers",
                f"{packed['layers']} layers, {format_count(packed['parameters'])} weights, "
                f"{packed['bits_per_weight']} bits per weight",
            )
        )
        kernels = packed["kernels"]
        rows.append(
            (
                f"kernels ({kernels['device']}, {kernels['dtype']})",
                kernel_counts(kernels["layers"], kernels["notes"]),
            )
        )
    parts: list[Any] = [_key_value_table("Model", rows)]
    manifest = info.get("manifest")
    if manifest:
        made = [
            ("method", manifest["method"]),
            ("format", manifest["format"]),
            ("parameters", ", ".join(f"{k}={v}" for k, v in manifest["parameters"].items())),
            ("created", f"{manifest['created']} by compress {manifest['tool']['version']}"),
            ("command", manifest["command"]),
            *_lineage_rows(manifest),
        ]
        if manifest.get("calibration"):
            calib = manifest["calibration"]
            made.append(("calibration", f"{calib['source']}: {calib['samples']} × {calib['seq_len']} tokens"))
        parts.append(_key_value_table("How it was made", made))
        phases = Table(title="Phases", title_justify="left")
        for column in ("phase", "wall", "peak RSS", "peak CUDA"):
            phases.add_column(column, justify="left" if column == "phase" else "right")
        for phase in manifest["phases"]:
            phases.add_row(
                phase["name"],
                f"{phase['wall_s']:.2f} s",
                format_bytes(phase["peak_rss_bytes"]),
                format_bytes(phase.get("peak_cuda_bytes")),
            )
        parts.append(phases)
    return Group(*parts)


_SIZE_ROWS = (
    ("num_layers", "layers"),
    ("hidden_size", "hidden size"),
    ("num_heads", "query heads"),
    ("num_kv_heads", "KV heads"),
    ("head_dim", "head dim"),
    ("intermediate_size", "MLP channels"),
)


def _sizes_table(title: str, before: dict, after: dict, parameters: tuple[int, int]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("", "before", "after"):
        table.add_column(column, justify="left" if not column else "right")
    for key, label in _SIZE_ROWS:
        changed = before[key] != after[key]
        table.add_row(label, str(before[key]), f"[bold]{after[key]}[/bold]" if changed else str(after[key]))
    old, new = parameters
    table.add_row("parameters", format_count(old), f"[bold]{format_count(new)}[/bold] ({new / old:.1%})")
    return table


def prune_plan_view(plan: dict[str, Any]) -> Table:
    """`compress prune --dry-run`: the sizes the plan leads to and the parameter count."""
    return _sizes_table(
        f"prune plan · importance {plan['importance']} · blocks {plan['layer_importance']}",
        plan["before"],
        plan["after"],
        (plan["parameters_before"], plan["parameters_after"]),
    )


def _where(dimension: str, removed: Any) -> str:
    """A one-line account of which units went: blocks by index, per-layer counts otherwise."""
    if dimension == "layers":
        return f"blocks {', '.join(str(i) for i in removed)}"
    if dimension == "hidden":
        return f"{len(removed)} channels"
    counts = {len(units) for units in removed.values()}
    unit = "heads" if dimension == "heads" else "channels"
    return f"{counts.pop() if len(counts) == 1 else '?'} {unit} in each of {len(removed)} layers"


def prune_report_view(report: dict[str, Any]) -> Group:
    """What pruning did: sizes, parameters, what went where, and how importance separated it."""
    sizes = _sizes_table(
        "pruned", report["before"], report["after"], (report["parameters_before"], report["parameters_after"])
    )
    removed = Table(title="removed", title_justify="left")
    for column in ("dimension", "where", "score kept (mean)", "score removed (mean)"):
        removed.add_column(column)
    for dimension, what in report["removed"].items():
        summary = report["importance"].get(dimension)
        if dimension == "layers":
            scores = summary or []
            kept = [s for i, s in enumerate(scores) if i not in what]
            gone = [scores[i] for i in what]
            means = [sum(v) / len(v) if v else None for v in (kept, gone)]
        else:
            means = [summary.get("kept_mean"), summary.get("removed_mean")]
        removed.add_row(
            dimension, _where(dimension, what), *(f"{m:.4g}" if m is not None else "-" for m in means)
        )
    return Group(sizes, removed)


def recipe_plan_view(
    name: str, run_dir: Any, stages: list[dict[str, Any]], eval_spec: dict[str, Any]
) -> Table:
    """`compress run --dry-run`: each stage, what it reads, its cache key, and whether it is cached."""
    table = Table(title=f"compress run {name} --dry-run · {run_dir}", title_justify="left")
    for column in ("stage", "does", "input", "key", "status"):
        table.add_column(column)
    for stage in stages:
        if stage["cached"]:
            status = "[green]cached[/green]"
        elif stage["key"] is None:
            status = "runs (after its input is built)"
        else:
            status = "runs"
        key = stage["key"][:12] if stage["key"] else "-"
        table.add_row(stage["name"], stage["summary"], stage["input"], key, status)
    gates = ", ".join(eval_spec["gates"]) or "none"
    table.caption = f"then: eval suite {eval_spec['suite']} against {eval_spec['baseline']}; gates: {gates}"
    return table
