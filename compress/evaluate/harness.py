"""The shared eval harness: score a baseline once, then every artifact the same way against it.

Order of work, chosen so that mistakes surface before hours of compute: check the device, the
gates (against the keys the requested metrics will write), task names and metrics, resolve every
model, tokenize the data, scan the weights of every model that will be scored for NaN/Inf; then
evaluate the baseline (or reuse its cached result and log-probs), then each artifact (or reuse its
`eval.json`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress import console
from compress.artifact import DENSE_FORMAT, describe, read_manifest, write_model_card, write_text_atomic
from compress.cache import cache_root
from compress.data import TokenWindows, sequential_windows
from compress.errors import CompressError
from compress.evaluate.compare import comparison_rows, markdown_table
from compress.evaluate.gates import SIZE_KEYS, SPEED_BASELINE_KEYS, check_gate, check_gates, parse_gate
from compress.evaluate.loaders import GGUF_FORMAT, artifact_format, load_for_eval
from compress.evaluate.perplexity import summarize
from compress.evaluate.results import (
    EvalReport,
    ModelResult,
    entry_key,
    read_cached_result,
    store_result,
)
from compress.evaluate.scoring import BaselineStore, score_pass, write_baseline_store
from compress.evaluate.suite import StoreLayout, Suite
from compress.modeling import ModelSource, load_tokenizer, resolve_device, resolve_model, tokenizers_match
from compress.quantize.runtime import runtime_summary
from compress.render import format_bytes, kernel_counts
from compress.telemetry import PhaseTimer
from compress.version import __version__


@dataclass
class EvalRequest:
    """Everything `compress eval` was asked to do."""

    artifacts: list[str]
    suite: Suite
    baseline: str | None = None
    extra_gates: list[str] = field(default_factory=list)
    price_per_hour: float | None = None
    device: str = "auto"
    reuse: bool = True


@dataclass
class _Context:
    """What every model's evaluation shares: the suite, the baseline's data and scores."""

    suite: Suite
    device: str
    windows: TokenWindows
    tokenizer: Any
    baseline_source: ModelSource
    price_per_hour: float | None
    layout: StoreLayout  # how the baseline's distributions are stored (full, or top K + tail)
    store: BaselineStore | None = None  # the baseline's log-probs, read by artifact passes
    store_dir: Path | None = None  # where the baseline's pass writes them, when it must
    baseline: ModelResult | None = None
    speed_baseline: nn.Module | None = None  # the baseline as it runs, timed beside each artifact
    problems: list[str] = field(default_factory=list)


def _display_name(source: ModelSource) -> str:
    return Path(source.reference.rstrip("/")).name or source.reference


def _home(source: ModelSource) -> Path:
    """Where a model's manifest and results live: its directory, or for a GGUF the directory the
    file sits in (an `export gguf` artifact) rather than the float copy transformers made of it."""
    if source.gguf:
        return Path(source.gguf["file"]).parent
    return source.path


def _is_artifact(source: ModelSource) -> bool:
    return read_manifest(_home(source)) is not None if source.gguf else source.is_artifact


def _max_positions(source: ModelSource) -> int | None:
    config = json.loads((source.path / "config.json").read_text())
    return config.get("max_position_embeddings") or config.get("n_positions")


def _baseline_reference(request: EvalRequest) -> str:
    """`--baseline`, else the source model recorded in the first artifact's lineage."""
    if request.baseline:
        return request.baseline
    for artifact in request.artifacts:
        manifest = read_manifest(Path(artifact)) if Path(artifact).is_dir() else None
        if manifest:
            return manifest.lineage.source["path"]
    raise CompressError("no --baseline given and the first artifact records no source model; pass --baseline")


def check_device(device: str) -> torch.device:
    """The device, refused now when torch does not know it or this machine lacks it: checked before
    cached results are reused, so `--device tpu` is an error whether or not anything runs."""
    resolved = resolve_device(device)
    kind = resolved.type
    if kind == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise CompressError(f"device '{device}' does not exist; this machine has {count} CUDA device(s)")
    if kind not in ("cpu", "cuda"):
        backend = getattr(torch, kind, None)
        available = getattr(backend, "is_available", None)
        if not (callable(available) and available()):
            raise CompressError(f"device '{device}' is not available here; use auto, cpu or cuda")
    return resolved


def _suite_checks(request: EvalRequest) -> None:
    """Everything that needs no model: device, gates against the keys that will be measured, tasks."""
    suite = request.suite
    check_device(request.device)
    check_gates([*suite.gates, *request.extra_gates], suite.gate_schema(request.price_per_hour is not None))
    if "tasks" in suite.metrics and suite.tasks:
        from compress.evaluate.tasks import check_task_names

        check_task_names(suite.tasks)


def _size_metrics(source: ModelSource) -> dict[str, Any]:
    if source.gguf:
        from compress.gguf_source import gguf_statistics

        info = gguf_statistics(Path(source.gguf["file"]))
        info["disk_bytes"] = info["weight_bytes"]
    else:
        info = describe(source.path)
    return {key: info[key] for key in SIZE_KEYS}


def _score(model: nn.Module, windows: TokenWindows, context: _Context, with_kld: bool):
    """One forward pass over the windows: the baseline's writes its log-probs, an artifact's reads them."""
    suite = context.suite
    if context.store_dir is not None:
        meta = {"baseline": context.baseline_source.sha256, "data": windows.fingerprint.as_dict()}
        return write_baseline_store(
            model, windows.input_ids, suite.batch_size, context.store_dir, context.layout, meta
        )
    store = context.store if with_kld else None
    return score_pass(model, windows.input_ids, suite.batch_size, store, "scoring")


def _measure(model: nn.Module, tokenizer, context: _Context, windows: TokenWindows, with_kld: bool) -> dict:
    """Every metric of the suite that needs the loaded model."""
    suite = context.suite
    metrics: dict[str, Any] = {}
    if "ppl" in suite.metrics or with_kld or context.store_dir is not None:
        scored = _score(model, windows, context, with_kld)
        metrics["ppl"] = _ppl_metrics(summarize(scored.window_nll, windows.input_ids.shape[1]), context)
        if scored.divergence is not None:
            metrics.update(scored.divergence.summary())
    if "tasks" in suite.metrics and suite.tasks:
        from compress.evaluate.tasks import run_tasks

        metrics["tasks"] = run_tasks(
            model, tokenizer, suite.tasks, batch_size=suite.batch_size, limit=suite.task_limit
        )
    return metrics


def _runs_as_scored(source: ModelSource, dtype: str) -> bool:
    """Whether the model scored in `dtype` is already the one the runtime would load: `auto`, or
    a dense checkpoint stored in that very dtype (a float32 baseline under the quick suite)."""
    if dtype == "auto" or artifact_format(source) == GGUF_FORMAT:  # llama.cpp has one way to run
        return True
    if artifact_format(source) != DENSE_FORMAT:
        return False
    config = json.loads((source.path / "config.json").read_text())
    return (config.get("dtype") or config.get("torch_dtype")) == dtype


def _measure_speed(model: nn.Module, role: str, context: _Context, vocab_size: int) -> dict:
    """Speed on the runtime path; an artifact's is timed side by side with the baseline's (same
    process, same prompts, repeats interleaved), and its ratios come from those same rounds."""
    from compress.evaluate.speed import measure_speed, measure_speeds, speed_ratios

    settings = context.suite.speed
    if hasattr(model, "runtime_description"):  # llama.cpp here decodes one sequence at a time
        settings = settings.model_copy(update={"batch_sizes": [1]})
    if role == "baseline":
        return measure_speed(model, settings, vocab_size=vocab_size)
    if context.speed_baseline is None:
        context.speed_baseline = load_for_eval(context.baseline_source, context.device, "auto")
    speeds = measure_speeds({"baseline": context.speed_baseline, "artifact": model}, settings, vocab_size)
    speed, baseline = speeds["artifact"], speeds["baseline"]
    speed["baseline"] = {key: baseline[key] for key in SPEED_BASELINE_KEYS}
    speed["vs_baseline"] = speed_ratios(speed, baseline)
    return speed


def _runtime_notice(name: str, runtime: dict) -> None:
    if runtime.get("runtime") == "llama.cpp":
        threads, kv_cache = runtime["threads"], runtime["kv_cache"]
        console.notice(f"{name}: runs in llama.cpp ({threads} threads, {kv_cache} KV cache)")
    elif runtime["kernels"]:
        layers = kernel_counts(runtime["kernels"], runtime.get("kernel_notes", {}))
        console.notice(f"{name}: runs in {runtime['dtype']}; layers: {layers}")


def _ppl_metrics(ppl, context: _Context) -> dict[str, Any]:
    values = {"value": ppl.ppl, "nll": ppl.mean_nll, "stderr_nll": ppl.stderr_nll, "tokens": ppl.tokens}
    if context.baseline is not None and "ppl" in context.baseline.metrics:
        base = context.baseline.metrics["ppl"]["value"]
        values["increase_pct"] = (ppl.ppl / base - 1.0) * 100.0
    return values


def _finish_metrics(metrics: dict[str, Any], model: nn.Module, source: ModelSource, timer, context) -> None:
    """Memory, size and cost: figures that need no extra forward pass."""
    from compress.evaluate.speed import cost_per_million_tokens, weight_memory_bytes

    suite = context.suite
    if "memory" in suite.metrics:
        peak = max(record.peak_rss_bytes for record in timer.records)
        cuda_peaks = [r.peak_cuda_bytes for r in timer.records if r.peak_cuda_bytes is not None]
        metrics["memory"] = {
            "weight_bytes": weight_memory_bytes(model),
            "peak_rss_bytes": peak,
            "peak_cuda_bytes": max(cuda_peaks) if cuda_peaks else None,
        }
    if "size" in suite.metrics:
        metrics["size"] = _size_metrics(source)
    if "cost" in suite.metrics and context.price_per_hour is not None and "speed" in metrics:
        best = max(metrics["speed"]["decode_tok_s"].values())
        metrics["cost"] = {
            "usd_per_1m_tokens": cost_per_million_tokens(context.price_per_hour, best),
            "price_per_hour": context.price_per_hour,
            "decode_tok_s": best,
        }


def _add_recovery(metrics: dict[str, Any], baseline: ModelResult | None) -> None:
    if not metrics.get("tasks"):
        return
    from compress.evaluate.tasks import recovery

    base_tasks = (baseline.metrics.get("tasks") if baseline else None) or {}
    for name, task in metrics.get("tasks", {}).items():
        if name in base_tasks:
            base = base_tasks[name]
            task["recovery"] = recovery(task["score"], base["score"], task["higher_is_better"])


def _evaluate_model(source: ModelSource, role: str, context: _Context) -> ModelResult:
    suite = context.suite
    start = time.perf_counter()
    timer = PhaseTimer()
    skipped: dict[str, str] = {}
    with timer.phase("load"):
        model = load_for_eval(source, context.device, suite.dtype)
        tokenizer = load_tokenizer(source) if role == "artifact" else context.tokenizer
    windows, with_kld = context.windows, role == "artifact" and "kld" in suite.metrics
    if role == "artifact" and not tokenizers_match(context.tokenizer, tokenizer, _probe_text(context)):
        reason = "the artifact's tokenizer differs from the baseline's"
        windows = sequential_windows(tokenizer, suite.data, windows.input_ids.shape[1], suite.max_tokens)
        if with_kld:
            skipped["kld"] = reason
            context.problems.append(f"kld skipped for '{source.reference}': {reason} (ppl still measured)")
        with_kld = False
    with timer.phase("evaluate"):
        metrics = _measure(model, tokenizer, context, windows, with_kld)
    described = getattr(model, "runtime_description", None)
    runtime = {"quality_dtype": described()["dtype"] if described else runtime_summary(model)["dtype"]}
    if not _runs_as_scored(source, suite.dtype) and {"speed", "memory"} & set(suite.metrics):
        del model  # speed and memory are the runtime's: reload as the artifact would run
        with timer.phase("load runtime"):
            model = load_for_eval(source, context.device, "auto")
    runtime.update(runtime_summary(model))
    if hasattr(model, "runtime_description"):
        runtime.update(model.runtime_description())
    _runtime_notice(_display_name(source), runtime)
    if "speed" in suite.metrics:
        with timer.phase("speed"):
            metrics["speed"] = _measure_speed(model, role, context, len(context.tokenizer))
    _finish_metrics(metrics, model, source, timer, context)
    if role == "artifact":
        _add_recovery(metrics, context.baseline)
    manifest = read_manifest(_home(source))
    del model
    return ModelResult(
        name=_display_name(source),
        path=str(source.gguf["file"] if source.gguf else source.path),
        role=role,
        method=manifest.method if manifest else None,
        format=artifact_format(source),
        sha256=source.sha256,
        suite=suite.name,
        suite_sha256=suite.fingerprint(),
        baseline_sha256=context.baseline_source.sha256,
        data=windows.fingerprint.as_dict(),
        metrics=metrics,
        skipped=skipped,
        runtime=runtime,
        device=str(resolve_device(context.device)),
        wall_s=round(time.perf_counter() - start, 3),
    )


def _probe_text(context: _Context) -> str:
    return context.tokenizer.decode(context.windows.input_ids[0])


def _baseline_paths(context: _Context) -> tuple[Path, Path]:
    """Cache locations of the baseline's result and log-probs, keyed by everything they depend on."""
    suite = context.suite
    key_source = {
        "baseline": context.baseline_source.sha256,
        "data": context.windows.fingerprint.sha256,
        "dtype": suite.dtype,
        "storage": context.layout.describe(),
        "batch": suite.batch_size,
        "tool": __version__,
    }
    store_key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:24]
    result_key = hashlib.sha256(f"{store_key}:{suite.fingerprint()}".encode()).hexdigest()[:24]
    root = cache_root() / "eval"
    return root / "results" / f"{result_key}.json", root / "baselines" / store_key


def _vocab_size(source: ModelSource) -> int:
    """The width of the model's logits, from its config (text config for multimodal wrappers)."""
    config = json.loads((source.path / "config.json").read_text())
    return int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0)


def _check_store_budget(suite: Suite, layout: StoreLayout, windows: TokenWindows, vocab: int) -> None:
    """A store over `--max-store` is refused before any work, with what would make it fit."""
    budget = suite.max_store_bytes
    if budget is None or "kld" not in suite.metrics:
        return
    windows_count, length = windows.input_ids.shape
    need = windows_count * (length - 1) * layout.bytes_per_position(vocab)
    if need > budget:
        raise CompressError(
            f"the baseline store ({layout.describe()}) would take {format_bytes(need)}, over --max-store "
            f"{suite.max_store}; use --kld-store topk, a smaller --kld-topk, or fewer --max-tokens"
        )


def _baseline_cached(context: _Context, reuse: bool) -> bool:
    """Whether the baseline's result (and, for KLD, its store) can be reused as they are."""
    result_file, store_dir = _baseline_paths(context)
    needs_store = "kld" in context.suite.metrics
    return reuse and result_file.is_file() and (BaselineStore(store_dir).is_complete() or not needs_store)


def _require_finite(source: ModelSource) -> None:
    """Refuse NaN/Inf weights before they are scored as a `nan` that passes for a result: the
    checkpoint scan quantize runs (a few MB at a time, no model in memory), named per model."""
    from compress.quantize.cast import check_finite_files

    try:
        check_finite_files(source.path)
    except CompressError as exc:
        raise CompressError(f"cannot score '{source.reference}': {exc}") from exc


def _evaluate_baseline(context: _Context, reuse: bool) -> ModelResult:
    """The baseline's own scores and its stored log-probs, computed at most once per key."""
    result_file, store_dir = _baseline_paths(context)
    store = BaselineStore(store_dir)
    needs_store = "kld" in context.suite.metrics
    if _baseline_cached(context, reuse):
        console.notice(f"baseline: reusing cached scores ({result_file.name})")
        result = ModelResult.model_validate_json(result_file.read_text())
    else:
        context.store_dir = store_dir if needs_store else None
        try:
            result = _evaluate_model(context.baseline_source, "baseline", context)
        finally:
            context.store_dir = None
        write_text_atomic(result_file, result.model_dump_json(indent=2))
        if needs_store:
            size = sum(f.stat().st_size for f in store_dir.iterdir())
            console.notice(
                f"baseline store: {format_bytes(size)} ({context.layout.describe()}) in {store_dir}"
            )
    context.store = store if needs_store else None
    return result


def _record_in_artifact(source: ModelSource, key: str, result: ModelResult, baseline: ModelResult) -> None:
    """Store the result in the artifact's eval.json and refresh its model card's results table."""
    home = _home(source)
    if not store_result(home, key, result, baseline):
        console.notice(f"{home} is read-only; results were not stored in it")
        return
    manifest = read_manifest(home)
    if manifest is not None:
        table = markdown_table(comparison_rows([baseline, result]))
        heading = f"Suite `{result.suite}` on `{result.data['source']}`:"
        write_model_card(home, manifest, f"{heading}\n\n{table}")


def _apply_gates(result: ModelResult, gates: list[str]) -> ModelResult:
    outcomes = [check_gate(parse_gate(g), result.metrics).as_dict() for g in gates]
    return result.model_copy(update={"gates": outcomes})


def evaluate(request: EvalRequest) -> tuple[EvalReport, list[str]]:
    """Score the baseline and every artifact; returns the report and the problems to report (exit 2)."""
    suite = request.suite
    _suite_checks(request)
    if not request.artifacts:
        raise CompressError("give at least one artifact or model directory to evaluate")
    artifact_sources = [resolve_model(a) for a in request.artifacts]
    baseline_source = resolve_model(_baseline_reference(request))
    tokenizer = load_tokenizer(baseline_source)
    seq_len = suite.seq_len
    if (limit := _max_positions(baseline_source)) and limit < seq_len:
        seq_len = limit
    windows = sequential_windows(tokenizer, suite.data, seq_len, suite.max_tokens)
    vocab = _vocab_size(baseline_source)
    layout = suite.store_layout(vocab)
    _check_store_budget(suite, layout, windows, vocab)
    context = _Context(
        suite, request.device, windows, tokenizer, baseline_source, request.price_per_hour, layout
    )
    key = entry_key(suite.fingerprint(), baseline_source.sha256)

    def cached_result(source: ModelSource) -> ModelResult | None:
        cached = read_cached_result(_home(source), key, source.sha256) if request.reuse else None
        same_data = cached is not None and cached.data.get("sha256") == windows.fingerprint.sha256
        return cached if same_data else None

    # Weights that will be scored (not those of a reused result) are scanned before any is scored.
    to_score = [] if _baseline_cached(context, request.reuse) else [baseline_source]
    to_score += [source for source in artifact_sources if cached_result(source) is None]
    for source in {source.path: source for source in to_score}.values():
        _require_finite(source)
    if seq_len < suite.seq_len:  # said once every input is known good: a failing run says only why
        console.notice(f"seq_len {suite.seq_len} exceeds the baseline's {seq_len} positions; using {seq_len}")
    context.baseline = _evaluate_baseline(context, request.reuse)

    gates = [*suite.gates, *request.extra_gates]
    results = []
    for source in artifact_sources:
        cached = cached_result(source)
        if cached is not None:
            console.notice(f"{_display_name(source)}: reusing eval.json (same artifact, suite and baseline)")
            result = _apply_gates(cached, gates)
        else:
            result = _apply_gates(_evaluate_model(source, "artifact", context), gates)
            if _is_artifact(source):
                _record_in_artifact(source, key, result, context.baseline)
        results.append(result)
    context.speed_baseline = None
    report = EvalReport(
        suite=suite.name, suite_sha256=suite.fingerprint(), baseline=context.baseline, results=results
    )
    return report, context.problems
