"""RTN and GPTQ over a whole model: which layers, in which order, with which statistics.

Both return one `LayerResult` per quantized linear layer (the integers, ready to pack, and the
layer's quantization error for the manifest) and leave the model holding the dequantized weights,
so that later blocks are calibrated on what the quantized model really computes. Embeddings, norms
and `lm_head` are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compress import console
from compress.calibrate import (
    BlockHook,
    BlockInputs,
    calibrate_sequentially,
    forward_batch,
    no_hook,
    record_stage,
)
from compress.errors import CompressError
from compress.experts import expert_layer_names
from compress.memory import return_freed_memory
from compress.modeling import DecoderLayout, LinearLayer, find_linear_layers
from compress.quantize.config import DEFAULT_GROUP_SIZE, QuantizeConfig
from compress.quantize.gptq import GPTQ
from compress.quantize.qweight import QuantizedWeight
from compress.quantize.rtn import KERNEL_GROUP_SIZES, rtn_quantize


@dataclass
class LayerResult:
    name: str  # full module name in the model
    weight: QuantizedWeight | None  # None once packed
    group_size: int
    stats: dict[str, float] = field(default_factory=dict)
    packed: dict[str, torch.Tensor] | None = None  # the format's tensors, from packing until written


def weight_matrix(layer: LinearLayer) -> torch.Tensor:
    """The layer's weight as [out, in] (GPT-2's Conv1D stores it transposed)."""
    weight = layer.module.weight.data
    return weight.T if layer.transposed else weight


def set_weight(layer: LinearLayer, matrix: torch.Tensor) -> None:
    """Write an [out, in] matrix back in the layer's own layout and dtype."""
    target = layer.module.weight
    target.data.copy_((matrix.T if layer.transposed else matrix).to(target.dtype))


#: Called once a block is quantized and its outputs computed: (index, block, that block's results).
BlockDone = Callable[[int, nn.Module, list[LayerResult]], None]
#: Called with each layer's result as soon as its integers are final (a writer packs them there).
LayerDone = Callable[[LayerResult], None]


def keep_result(result: LayerResult) -> None:
    """The default: results keep their int32 integers (callers that read them, not a writer)."""


def block_finished(layout: DecoderLayout, results: list[LayerResult], done: BlockDone | None) -> BlockHook:
    """The engine's after-block hook that hands `done` the results of the block just finished."""
    if done is None:
        return no_hook

    def hook(index: int, block: nn.Module) -> None:
        prefix = f"{layout.blocks_path}.{index}."
        done(index, block, [result for result in results if result.name.startswith(prefix)])

    return hook


def apply_quantized(layer: LinearLayer, full_name: str, qw: QuantizedWeight, stats: dict) -> LayerResult:
    original = weight_matrix(layer).float()
    dequantized = qw.dequantize()
    stats = {
        **stats,
        "weight_rel_error": ((dequantized - original).norm() / original.norm().clamp_min(1e-12)).item(),
    }
    set_weight(layer, dequantized)
    return LayerResult(full_name, qw, qw.group_size, stats)


#: An expert that saw fewer calibration tokens than this, or than a quarter of its input width, is
#: rounded to nearest instead: a router may send an expert a handful of tokens (or none), and a
#: Hessian of that rank fits those tokens, not the expert's inputs. Dense layers see every token.
MIN_CALIBRATION_TOKENS = 16


def too_few_tokens(tokens: int, in_features: int) -> bool:
    return tokens < max(MIN_CALIBRATION_TOKENS, in_features // 4)


class RoundedInstead:
    """The layers rounded to nearest for want of calibration tokens: one notice for all of them."""

    def __init__(self) -> None:
        self.layers: dict[str, int] = {}

    def round(self, layer: LinearLayer, full_name: str, config: QuantizeConfig, tokens: int) -> LayerResult:
        self.layers[full_name] = tokens
        qw = rtn_quantize(weight_matrix(layer), config.bits, config.nominal_group_size, config.symmetric)
        return apply_quantized(layer, full_name, qw, {"calibration_tokens": tokens, "rounded_instead": 1.0})

    def notice(self, method: str) -> None:
        if self.layers:
            name, tokens = next(iter(self.layers.items()))
            console.notice(
                f"{len(self.layers)} layer(s) saw too few calibration tokens for {method} and were rounded "
                f"to nearest instead (e.g. {name}: {tokens} tokens); more --calib-samples route more "
                "tokens to every expert"
            )


def check_group_size(layout: DecoderLayout, config: QuantizeConfig) -> None:
    """An explicit group size must divide every quantized layer's input width (no silent fallback),
    unless `group_fallback` asks for the per-layer fallback by name."""
    size = config.group_size
    if size is None or size == -1 or config.group_fallback:
        return
    for index, block in enumerate(layout.blocks):
        for layer in find_linear_layers(block):
            if layer.in_features % size:
                divisor = max(d for d in range(1, size + 1) if layer.in_features % d == 0)
                raise CompressError(
                    f"--group-size {size} does not divide the input width {layer.in_features} of "
                    f"{layout.blocks_path}.{index}.{layer.name}; use {divisor}, -1, --group-fallback, or "
                    "leave it unset for the automatic per-layer fallback"
                )


def with_default_group(layout: DecoderLayout, config: QuantizeConfig) -> QuantizeConfig:
    """With no `--group-size`: one group size for every layer when a kernel size divides every
    width (128, else 64, else 32), so the artifact is a standard GPTQ/AWQ checkpoint that other
    runtimes load (their config has one `group_size`; SmolLM2's 576 and 1536 take 64). Only when
    none does are groups chosen per layer (`effective_group_size`), which compress alone loads."""
    if config.group_size is not None:
        return config
    widths = {layer.in_features for block in layout.blocks for layer in find_linear_layers(block)}
    for size in (size for size in KERNEL_GROUP_SIZES if size <= DEFAULT_GROUP_SIZE):
        if all(width % size == 0 for width in widths):
            return config.model_copy(update={"group_size": size})
    return config


def quantize_rtn(
    layout: DecoderLayout,
    config: QuantizeConfig,
    before_block: BlockHook = no_hook,
    block_done: BlockDone | None = None,
    layer_done: LayerDone = keep_result,
) -> list[LayerResult]:
    """Round every block linear to nearest: no data needed."""
    results: list[LayerResult] = []
    after_block = block_finished(layout, results, block_done)
    for index, block in enumerate(layout.blocks):
        before_block(index, block)
        for layer in find_linear_layers(block):
            qw = rtn_quantize(weight_matrix(layer), config.bits, config.nominal_group_size, config.symmetric)
            results.append(apply_quantized(layer, f"{layout.blocks_path}.{index}.{layer.name}", qw, {}))
            layer_done(results[-1])
        after_block(index, block)
    return results


def quantize_gptq(
    model: nn.Module,
    layout: DecoderLayout,
    calibration: torch.Tensor,
    config: QuantizeConfig,
    batch_size: int | None = None,
    before_block: BlockHook = no_hook,
    block_done: BlockDone | None = None,
    layer_done: LayerDone = keep_result,
) -> list[LayerResult]:
    """GPTQ, block by block and stage by stage, each stage's Hessian from the quantized earlier ones.

    `batch_size` windows per forward; by default `forward_batch` of the window length."""
    results: list[LayerResult] = []
    rounded = RoundedInstead()

    def transform(index: int, block: nn.Module, inputs: BlockInputs, stages: list[list[LinearLayer]]) -> None:
        experts = expert_layer_names(block)
        for stage in stages:
            # The stage's layers read one tensor: one Hessian, gathered from the first of them.
            statistics = GPTQ(stage[0].in_features)
            record_stage(block, inputs, stage[:1], lambda layer, x, gptq=statistics: gptq.add_batch(x))
            if stage[0].name in experts and too_few_tokens(statistics.samples, stage[0].in_features):
                for layer in stage:
                    name = f"{layout.blocks_path}.{index}.{layer.name}"
                    results.append(rounded.round(layer, name, config, statistics.samples))
                    layer_done(results[-1])
                continue
            quantized = statistics.quantize_stacked(
                [weight_matrix(layer) for layer in stage],
                config.bits,
                config.nominal_group_size,
                config.symmetric,
                config.act_order,
                config.damp_percent,
            )
            for layer, (qw, stats) in zip(stage, quantized, strict=True):
                stats = {**stats, "calibration_tokens": statistics.samples}
                results.append(
                    apply_quantized(layer, f"{layout.blocks_path}.{index}.{layer.name}", qw, stats)
                )
                layer_done(results[-1])
            del statistics, quantized
            return_freed_memory()  # the stage's Hessian work, before the next stage's forward

    after_block = block_finished(layout, results, block_done)
    calibrate_sequentially(
        model,
        layout,
        calibration,
        transform,
        batch_size or forward_batch(calibration.shape[1]),
        "GPTQ",
        before_block,
        after_block,
        config.calib_torch_dtype,
    )
    rounded.notice("GPTQ")
    return results
