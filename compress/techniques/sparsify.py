"""`compress sparsify`: weight sparsity by Wanda (Sun et al., 2023), unstructured or N:M.

A weight's importance is |W_ij| · ‖X_j‖₂, its magnitude times the norm of the input feature it
multiplies over the calibration tokens; in each output row the least important share is set to
zero (`unstructured`), or in every run of M consecutive inputs the M−N least important (`2:4`,
`4:8`: the patterns sparse tensor cores run). No weight update, one calibration pass through the
shared engine, block by block and stage by stage on the already-sparse earlier layers, like GPTQ.
`importance: magnitude` ranks by |W| alone (the baseline the paper compares against; no data).

The artifact is a dense `transformers` model whose pruned weights are zeros: the same size and,
on CPUs and in the torch runtime, the same speed. It is for runtimes with sparse kernels (2:4 on
NVIDIA GPUs) and for stacking with quantization; its eval shows what the zeros cost in quality.

This module is also the worked example of the technique contract (`compress.technique`): a
config, a `run` that publishes an artifact, one `register` call, and nothing edited elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.technique import RecipeData, RunContext, Technique, calibration_defaults, register

Pattern = Literal["unstructured", "2:4", "4:8"]
DEFAULT_SPARSITY = 0.5
#: Defaults of the calibration options, which only Wanda reads.
CALIBRATION_DEFAULTS = {"calib": None, "calib_samples": 64, "seq_len": 256, "seed": 0}


def pattern_sparsity(pattern: str) -> float | None:
    """The share an N:M pattern zeroes (1 − N/M); None when unstructured (or not a pattern)."""
    kept, colon, run = pattern.partition(":")
    if not colon or not kept.isdigit() or not run.isdigit() or int(run) == 0:
        return None
    return 1 - int(kept) / int(run)


class SparsifyConfig(BaseModel):
    """How much to zero, in which pattern, ranked how, calibrated on what."""

    model_config = ConfigDict(extra="forbid")

    #: None until validated: 0.5 unstructured, the pattern's own share (1 − N/M) for N:M.
    sparsity: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of each block weight set to zero (default 0.5; an N:M pattern sets its own).",
    )
    pattern: Pattern = Field(
        "unstructured",
        description="unstructured, or N:M (2:4, 4:8: N kept in every M inputs; sets the sparsity).",
    )
    importance: Literal["wanda", "magnitude"] = Field(
        "wanda", description="wanda: |weight| × input norm; magnitude: |weight| alone."
    )
    calib: str | None = Field(None, description="Calibration text (any data source).")
    calib_samples: int = Field(64, ge=1, description="Calibration windows.")
    seq_len: int = Field(256, ge=16, description="Calibration window length (capped by the model).")
    seed: int = Field(0, description="Calibration sampling seed.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, …")

    @model_validator(mode="before")
    @classmethod
    def _sparsity_of_the_pattern(cls, data: Any) -> Any:
        """An N:M pattern decides the sparsity: an explicit one that disagrees would be recorded
        in the manifest while the pattern made another, so it is refused; an equal one is fine."""
        if not isinstance(data, dict):
            return data
        pattern, sparsity = data.get("pattern", "unstructured"), data.get("sparsity")
        natural = pattern_sparsity(pattern) if isinstance(pattern, str) else None
        if natural is None:  # unstructured (or a bad pattern, which the field's own check names)
            return {**data, "sparsity": DEFAULT_SPARSITY} if sparsity is None else data
        if sparsity is None:
            return {**data, "sparsity": natural}
        try:
            given = float(sparsity)
        except (TypeError, ValueError):
            return data  # not a number: the field's own check names it
        if not math.isclose(given, natural):
            raise ValueError(
                f"--sparsity {sparsity} disagrees with --pattern {pattern}, which zeroes {natural:g} "
                f"of every weight; leave --sparsity out (or give {natural:g})"
            )
        return data

    @model_validator(mode="after")
    def _calibration_applies(self) -> SparsifyConfig:
        """Magnitude reads no data: a calibration option given with it would be recorded and do nothing."""
        if self.importance == "magnitude":
            for name, default in CALIBRATION_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ValueError(
                        f"--{name.replace('_', '-')} has no effect with --importance magnitude (it reads "
                        "no calibration data); leave it out, or use --importance wanda"
                    )
        return self

    @property
    def kept_of(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern; None when unstructured."""
        if self.pattern == "unstructured":
            return None
        kept, run = self.pattern.split(":")
        return int(kept), int(run)

    @property
    def effective_sparsity(self) -> float:
        """The share zeroed: the pattern's for N:M (validation makes `sparsity` agree with it)."""
        if self.kept_of is not None:
            return 1 - self.kept_of[0] / self.kept_of[1]
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity


def prune_mask(scores: Any, config: SparsifyConfig) -> Any:
    """True where a weight [out, in] is zeroed: the lowest scores per row, or per run of M inputs."""
    import torch

    if config.kept_of is None:
        count = int(scores.shape[1] * config.effective_sparsity)
        lowest = torch.topk(scores, count, dim=1, largest=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, True)
    kept, run = config.kept_of
    runs = scores.reshape(scores.shape[0], -1, run)
    lowest = torch.topk(runs, run - kept, dim=2, largest=False).indices
    return torch.zeros_like(runs, dtype=torch.bool).scatter_(2, lowest, True).reshape(scores.shape)


def _check_widths(layout: Any, config: SparsifyConfig) -> None:
    from compress.errors import CompressError
    from compress.modeling import find_linear_layers

    if config.kept_of is None:
        return
    run = config.kept_of[1]
    for block in layout.blocks:
        for layer in find_linear_layers(block):
            if layer.in_features % run:
                raise CompressError(
                    f"--pattern {config.pattern} needs input widths divisible by {run}; "
                    f"{layer.name} has {layer.in_features} (use --pattern unstructured)"
                )


def _input_norms(block: Any, inputs: Any, layer: Any) -> Any:
    """‖X_j‖₂ over the calibration tokens, per input feature of `layer` (and of its stage)."""
    import torch

    from compress.calibrate import record_stage

    squares = torch.zeros(layer.in_features, dtype=torch.float64)
    record_stage(block, inputs, [layer], lambda _, x: squares.add_(x.double().pow(2).sum(dim=0)))
    return squares.sqrt().float()


def _sparsify(model: Any, layout: Any, input_ids: Any, config: SparsifyConfig) -> dict[str, float]:
    """Zero each block linear's least important weights in place; returns each layer's sparsity.

    With `input_ids` (Wanda), block by block through the calibration engine; without (magnitude),
    no data and no forward at all."""
    import torch

    from compress.calibrate import calibrate_sequentially, forward_batch
    from compress.modeling import find_linear_layers
    from compress.quantize.calibrated import set_weight, weight_matrix

    achieved: dict[str, float] = {}

    def zero(index: int, layer: Any, norms: torch.Tensor) -> None:
        weight = weight_matrix(layer).float()
        mask = prune_mask(weight.abs() * norms, config)
        set_weight(layer, weight.masked_fill(mask, 0))
        achieved[f"{layout.blocks_path}.{index}.{layer.name}"] = round(mask.float().mean().item(), 6)

    if input_ids is None:
        for index, block in enumerate(layout.blocks):
            for layer in find_linear_layers(block):
                zero(index, layer, torch.ones(layer.in_features))
        return achieved

    def transform(index: int, block: Any, inputs: Any, stages: list) -> None:
        for stage in stages:
            norms = _input_norms(block, inputs, stage[0])
            for layer in stage:
                zero(index, layer, norms)

    calibrate_sequentially(model, layout, input_ids, transform, forward_batch(input_ids.shape[1]), "sparsify")
    return achieved


def run(source: str | Path, config: SparsifyConfig, out: Path | None, context: RunContext) -> Path:
    """Load, calibrate, zero, and publish a dense artifact with the sparsity per layer in its manifest."""
    from compress.architecture import architecture_of, require_linear_weights
    from compress.artifact import (
        DENSE_FORMAT,
        api_call,
        new_manifest,
        publish,
        save_model_files,
    )
    from compress.calibration_text import calibration_windows
    from compress.modeling import (
        discover_layout,
        load_config,
        load_model,
        reject_quantized,
        resolve_device,
        resolve_model,
        stored_dtype,
    )
    from compress.ownership import check_output_dir, command_inputs
    from compress.staging import staged_directory
    from compress.telemetry import PhaseTimer

    model_source = resolve_model(source)
    name = Path(model_source.reference.rstrip("/")).name or "model"
    out_path = Path(out) if out is not None else Path("compressed") / f"{name}-sparse"
    inputs = command_inputs(model_source, options=config)
    check_output_dir(out_path, context.force, inputs)
    reject_quantized(model_source, context.trust_remote_code)
    require_linear_weights(
        architecture_of(model_source.path, context.trust_remote_code),
        "sparsify",
        "its experts would stay dense",
    )
    device = resolve_device(config.device)
    timer = PhaseTimer()
    with timer.phase("load"):
        model = load_model(
            model_source, "float32", config.device, context.trust_remote_code, require_finite=True
        )
        layout = discover_layout(model)
    _check_widths(layout, config)
    windows = None
    if config.importance == "wanda":
        with timer.phase("calibration_data"):
            windows = calibration_windows(
                model, model_source, config.calib, config.calib_samples, config.seq_len, config.seed
            )
    with timer.phase("sparsify"):
        achieved = _sparsify(model, layout, windows.input_ids if windows is not None else None, config)
    model.to(stored_dtype(load_config(model_source, context.trust_remote_code)))
    with staged_directory(out_path, context.force, inputs=inputs) as staging:
        with timer.phase("save"):
            save_model_files(model, model_source.path, staging)
        manifest = new_manifest(
            method=f"sparsify-{config.importance}",
            config=config,
            source=model_source,
            command=context.command or api_call("sparsify", source, out_path, **config.model_dump()),
            recipe=context.recipe,
            format=DENSE_FORMAT,
            phases=timer.as_dicts(),
            device=device,
            calibration=windows.fingerprint.as_dict() if windows is not None else None,
            seed=config.seed if windows is not None else None,
            extra={"sparsity": {"target": config.effective_sparsity, "layers": achieved}},
        )
        publish(staging, manifest, model)
    return out_path


def _recipe_data(config: SparsifyConfig, data: RecipeData) -> dict[str, Any]:
    """Magnitude reads no data, so a new calibration text does not re-run it."""
    return calibration_defaults(config, data) if config.importance == "wanda" else {}


register(
    Technique(
        name="sparsify",
        config=SparsifyConfig,
        run=run,
        summary=lambda config: (
            f"sparsify {config.importance} {config.pattern} {config.effective_sparsity:.0%}"
        ),
        help="Zero the least important weights (Wanda or magnitude), unstructured or N:M; a dense artifact.",
        recipe_data=_recipe_data,
        epilog="Examples:\n\n  compress sparsify ./my-model --sparsity 0.5 --calib data.jsonl\n\n"
        "  compress sparsify ./my-model --pattern 2:4 --calib data.jsonl --out out/sparse-2of4",
    )
)
