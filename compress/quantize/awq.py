"""AWQ (Lin et al., 2023): protect the weights that meet large activations by scaling them up
before rounding, and fold the inverse scale into the operation that produces their input.

Per block, for each group of linears that read one tensor: search a per-input-channel scale
s = x̄^α / w̄^(1−α) over a grid of α, minimizing the error of the group's outputs on calibration
inputs after quantization; divide the producing norm (or linear) by s and multiply the linears'
input columns by s (an exact rewrite of the float model). Then search, per output row and group,
how far to clip the weights' range, and round to the grid. Which operation feeds which linears is
found by probing each block (`scale_groups.py`), so every family gets the folds it allows.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.calibrate import (
    BlockHook,
    BlockInputs,
    calibrate_sequentially,
    no_hook,
    record_stage,
)
from compress.experts import expert_layer_names
from compress.modeling import DecoderLayout, LinearLayer
from compress.quantize.calibrated import (
    BlockDone,
    LayerDone,
    LayerResult,
    RoundedInstead,
    apply_quantized,
    block_finished,
    keep_result,
    too_few_tokens,
    weight_matrix,
)
from compress.quantize.config import QuantizeConfig
from compress.quantize.rtn import effective_group_size, rtn_quantize
from compress.quantize.scale_groups import find_scale_groups

RATIO_GRID = 20
CLIP_GRID = 20
CLIP_MIN_SHRINK = 0.5
MAX_SEARCH_TOKENS = 4096
CLIP_TOKENS = 512


def _fake_quantize(weight: torch.Tensor, config: QuantizeConfig) -> torch.Tensor:
    return rtn_quantize(weight, config.bits, config.nominal_group_size, config.symmetric).dequantize()


def _subsample(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    generator = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=generator)[:limit]]


def _output_error(difference: torch.Tensor, gram: torch.Tensor, tokens: int) -> torch.Tensor:
    """Mean over tokens of (x · dᵀ)² per row of `difference` [rows, in], from the inputs' Gram
    matrix xᵀx [in, in]: the error of every output without computing any output (in² work per
    row instead of tokens × in)."""
    return ((difference @ gram) * difference).sum(dim=1) / tokens


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], config: QuantizeConfig) -> torch.Tensor:
    """The per-input-channel scale minimizing the group's output error after quantization."""
    stacked = torch.cat(weights, dim=0).float()
    x_mean = x.abs().mean(dim=0)
    size = effective_group_size(stacked.shape[1], config.nominal_group_size)
    grouped = stacked.abs().reshape(stacked.shape[0], -1, size)
    w_mean = (grouped / grouped.amax(dim=2, keepdim=True).clamp_min(1e-8)).reshape_as(stacked).mean(dim=0)
    gram = x.T @ x
    best_scale, best_error = torch.ones_like(x_mean), float("inf")
    for step in range(RATIO_GRID):
        ratio = step / RATIO_GRID
        scale = x_mean.pow(ratio).clamp_min(1e-4) / w_mean.pow(1 - ratio).clamp_min(1e-4)
        scale = scale / (scale.max() * scale.min()).sqrt()
        quantized = _fake_quantize(stacked * scale, config) / scale
        error = _output_error(quantized - stacked, gram, x.shape[0]).mean().item()
        if error < best_error:
            best_scale, best_error = scale, error
    return best_scale


def search_clip(weight: torch.Tensor, x: torch.Tensor, config: QuantizeConfig) -> torch.Tensor:
    """The weight with each (row, group) range clipped where that lowers the output error."""
    out_features, in_features = weight.shape
    size = effective_group_size(in_features, config.nominal_group_size)
    w = weight.float().reshape(out_features, -1, size)  # [out, groups, size]
    xg = x.float().reshape(x.shape[0], -1, size).transpose(0, 1)  # [groups, tokens, size]
    grams = xg.transpose(1, 2) @ xg  # [groups, size, size]: each group's inputs, xᵀx
    original_max = w.abs().amax(dim=2, keepdim=True)
    best_max = original_max.clone()
    best_error = torch.full((out_features, w.shape[1]), float("inf"))
    for step in range(int(CLIP_GRID * (1 - CLIP_MIN_SHRINK))):
        max_value = original_max * (1 - step / CLIP_GRID)
        clipped = torch.clamp(w, -max_value, max_value).reshape(out_features, in_features)
        difference = (_fake_quantize(clipped, config).reshape_as(w) - w).transpose(
            0, 1
        )  # [groups, out, size]
        error = ((difference @ grams) * difference).sum(dim=2).T / x.shape[0]  # [out, groups]
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_max = torch.where(better.unsqueeze(2), max_value, best_max)
    return torch.clamp(w, -best_max, best_max).reshape(out_features, in_features)


def quantize_awq(
    model: nn.Module,
    layout: DecoderLayout,
    calibration: torch.Tensor,
    config: QuantizeConfig,
    batch_size: int = 8,
    before_block: BlockHook = no_hook,
    block_done: BlockDone | None = None,
    layer_done: LayerDone = keep_result,
) -> list[LayerResult]:
    """AWQ over every block: scale search and folding, clip search, then rounding."""
    results: list[LayerResult] = []
    rounded = RoundedInstead()

    def collect(block: nn.Module, inputs: BlockInputs, layers: list[LinearLayer]) -> dict[str, torch.Tensor]:
        seen: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
        record_stage(block, inputs, layers, lambda layer, x: seen[layer.name].append(x.float()))
        widths = {layer.name: layer.in_features for layer in layers}
        return {
            name: _subsample(
                torch.cat(parts) if parts else torch.zeros(0, widths[name]), MAX_SEARCH_TOKENS, config.seed
            )
            for name, parts in seen.items()
        }

    def transform(index: int, block: nn.Module, inputs: BlockInputs, stages: list[list[LinearLayer]]) -> None:
        layers = {layer.name: layer for stage in stages for layer in stage}
        experts = expert_layer_names(block)
        for group in find_scale_groups(block, inputs, stages):
            consumers = [layers[name] for name in group.consumers]
            x = collect(block, inputs, consumers[:1])[consumers[0].name]
            if consumers[0].name in experts and too_few_tokens(x.shape[0], x.shape[1]):
                continue  # no scale rather than one fitted to a handful of tokens
            scale = search_scale(x, [weight_matrix(layer) for layer in consumers], config)
            group.fold(block, layers, scale)
        observed = collect(block, inputs, list(layers.values()))
        for name, layer in layers.items():
            full_name = f"{layout.blocks_path}.{index}.{name}"
            if name in experts and too_few_tokens(observed[name].shape[0], layer.in_features):
                results.append(rounded.round(layer, full_name, config, observed[name].shape[0]))
                layer_done(results[-1])
                continue
            clipped = search_clip(
                weight_matrix(layer), _subsample(observed[name], CLIP_TOKENS, config.seed), config
            )
            qw = rtn_quantize(clipped, config.bits, config.nominal_group_size, config.symmetric)
            results.append(apply_quantized(layer, full_name, qw, {}))
            layer_done(results[-1])

    after_block = block_finished(layout, results, block_done)
    calibrate_sequentially(
        model,
        layout,
        calibration,
        transform,
        batch_size,
        "AWQ",
        before_block,
        after_block,
        config.calib_torch_dtype,
    )
    rounded.notice("AWQ")
    return results
