"""Prune a model into a smaller dense artifact: plan, score, cut, save, report.

The plan (target sizes and the parameter count they give) is computed from the config alone, so
`--dry-run` costs nothing. Importance is scored on the unpruned model, all dimensions at once (as
Minitron does), then heads, MLP channels and hidden channels are cut and blocks removed. The result
is saved in the source checkpoint's dtype as a plain `transformers` model.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from compress.artifact import (
    DENSE_FORMAT,
    api_call,
    new_manifest,
    publish,
    save_model_files,
)
from compress.calibration_text import calibration_windows
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    count_parameters,
    load_config,
    load_model,
    reject_quantized,
    resolve_device,
    resolve_model,
    stored_dtype,
)
from compress.options import parse_options
from compress.ownership import check_output_dir, command_inputs
from compress.prune.config import PruneConfig
from compress.prune.cut import cut
from compress.prune.geometry import config_geometry, geometry, predict_parameter_count, pruned_config
from compress.prune.importance import Scores, depth_scores, width_scores
from compress.prune.plan import Sizes, plan_sizes
from compress.staging import staged_directory
from compress.telemetry import PhaseTimer


def default_output(source: ModelSource) -> Path:
    name = Path(source.reference.rstrip("/")).name or "model"
    return Path("compressed") / f"{name}-pruned"


def _sizes(config: PruneConfig, model_config) -> Sizes:
    """The planned sizes; a plan that removes nothing is an error (it would write a full copy)."""
    sizes = plan_sizes(config, model_config)
    if sizes == Sizes():
        raise CompressError(
            "nothing to prune: give --heads, --mlp, --hidden or --layers (or their absolute forms) a "
            "value that removes at least one unit"
        )
    return sizes


def plan(model: str | Path, trust_remote_code: bool = False, **options: Any) -> dict[str, Any]:
    """The sizes before and after and the parameter counts, from the config alone (`--dry-run`)."""
    config = parse_options(PruneConfig, options)
    source = resolve_model(model)
    model_config = load_config(source, trust_remote_code)
    sizes = _sizes(config, model_config)
    after = pruned_config(model_config, **asdict(sizes))
    return {
        "model": source.reference,
        "before": asdict(config_geometry(model_config)),
        "after": asdict(config_geometry(after)),
        "parameters_before": predict_parameter_count(model_config),
        "parameters_after": predict_parameter_count(after),
        "importance": config.importance,
        "layer_importance": config.layer_importance,
    }


def _scores(model: torch.nn.Module, config: PruneConfig, sizes: Sizes, ids: torch.Tensor | None) -> Scores:
    """Every score the plan needs; activation statistics and block influence share one pass."""
    need = sizes.width
    one_pass = config.importance == "activation" and config.layer_importance == "influence"
    if sizes.num_layers is not None and one_pass:
        need = need | {"layers"}
    scores = width_scores(model, config.importance, ids, need, config.seed)
    if sizes.num_layers is not None and scores.layers is None:
        scores.layers = depth_scores(model, config.layer_importance, ids, config.seed)
    return scores


def prune(
    model: str | Path,
    out: str | Path | None = None,
    *,
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Prune `model` and write an artifact; returns its path. The report (sizes, what was removed
    where, importance summaries) is the manifest's `extra["pruning"]`.

    `options` are the `PruneConfig` fields (heads, mlp, hidden, layers, importance, calib, …); `recipe`
    names the recipe stage that asked for it, recorded in the manifest.
    """
    config = parse_options(PruneConfig, options)
    target_device = resolve_device(config.device)
    source = resolve_model(model)
    out_path = Path(out) if out is not None else default_output(source)
    inputs = command_inputs(source, options=config)
    check_output_dir(out_path, force, inputs)
    reject_quantized(source, trust_remote_code)
    model_config = load_config(source, trust_remote_code)
    sizes = _sizes(config, model_config)
    predicted = predict_parameter_count(pruned_config(model_config, **asdict(sizes)))

    timer = PhaseTimer()
    with timer.phase("load"):
        loaded = load_model(source, "float32", config.device, trust_remote_code, require_finite=True)
    before = count_parameters(loaded)
    windows = None
    if config.needs_data:
        with timer.phase("calibration_data"):
            windows = calibration_windows(
                loaded, source, config.calib, config.calib_samples, config.seq_len, config.seed
            )
    with timer.phase("importance"):
        scores = _scores(loaded, config, sizes, windows.input_ids if windows is not None else None)
    with timer.phase("prune"):
        report = cut(loaded, sizes, scores)
    after = count_parameters(loaded)
    if after != predicted:
        raise RuntimeError(f"internal error: pruned to {after} parameters, the plan predicted {predicted}")
    report = {
        "before": asdict(config_geometry(model_config)),
        "after": asdict(geometry(loaded)),
        "parameters_before": before,
        "parameters_after": after,
        **report,
    }
    loaded.to(stored_dtype(model_config))
    with staged_directory(out_path, force, inputs=inputs) as staging:
        with timer.phase("save"):
            save_model_files(loaded, source.path, staging)
        manifest = new_manifest(
            method="prune",
            config=config,
            source=source,
            command=command or api_call("prune", model, out_path, **config.model_dump()),
            recipe=recipe,
            format=DENSE_FORMAT,
            phases=timer.as_dicts(),
            device=target_device,
            calibration=windows.fingerprint.as_dict() if windows is not None else None,
            seed=config.seed,
            extra={"pruning": report},
        )
        publish(staging, manifest, loaded, after, stored_dtype(model_config))
    return out_path
