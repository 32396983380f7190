"""Where AWQ may fold a scale: found by probing a block, not listed per architecture.

AWQ multiplies a group of linears' input columns by s and divides the operation that produced
their input by s. That rewrite is exact only where the producer's output reaches the group and
nothing else unchanged, and only where the producer can absorb 1/s: a norm's weight (with its
bias), or a linear's rows. Which is the case is architecture knowledge (Llama: the attention norm
feeds q/k/v; the value projection feeds the output projection; up feeds down through the gate's
product), and the families differ (parallel blocks feed attention and MLP from one norm; Gemma's
norms scale by `1 + w`; fused projections; a GELU between two linears forbids the fold).

So each block kind is probed once, on one calibration batch in float32:
1. Stages (the linears that read one tensor) come from `calibrate.sequential_stages`.
2. A stage's *producer* is the module whose output is that very tensor: a norm-like module with a
   1-D weight as wide as the stage's input, or a linear. Every linear as wide as a stage's input is
   a candidate producer too (the value → output, up → down pairs, whose tensor passes through
   attention or an elementwise product on the way).
3. A norm's weight offset is measured (Gemma's `(1 + w)`: 1; most: 0), so 1/s is folded exactly.
4. Each candidate fold is tried with a random positive scale and kept only if the block's output
   is unchanged: a fold through a GELU, into a norm whose output also feeds the residual, or past
   a per-head reshape that does not preserve channels fails and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.calibrate import BlockInputs, block_output
from compress.modeling import LinearLayer, find_linear_layers

#: The largest relative change of the block's output a fold may cause and still count as exact
#: (float32 rounding moves it ~1e-6; a fold through a nonlinearity moves it ~1e-1).
EXACT_TOLERANCE = 1e-4
#: How far the probe's random scales stray from 1 (log-uniform): far enough that a wrong fold shows.
PROBE_SPREAD = 0.5


@dataclass(frozen=True)
class ScaleGroup:
    """A producer whose output is divided by s and the linears whose input columns are multiplied by s."""

    producer: str  # module name inside the block
    consumers: tuple[str, ...]
    offset: float = 0.0  # norm weights act as (offset + w): Gemma's norms have offset 1

    def fold(self, block: nn.Module, layers: dict[str, LinearLayer], scale: torch.Tensor) -> None:
        """Divide the producer's output by `scale` and multiply the consumers' input columns by it."""
        producer = block.get_submodule(self.producer)
        with torch.no_grad():
            if self.producer in layers:
                _matrix(layers[self.producer]).div_(scale.unsqueeze(1).to(producer.weight.dtype))
            else:
                weight = producer.weight
                weight.copy_(((self.offset + weight.float()) / scale - self.offset).to(weight.dtype))
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(scale.to(producer.bias.dtype))
            for name in self.consumers:
                _matrix(layers[name]).mul_(scale.unsqueeze(0).to(layers[name].module.weight.dtype))


def _matrix(layer: LinearLayer) -> torch.Tensor:
    """The layer's weight as an [out, in] view (GPT-2's Conv1D stores [in, out])."""
    weight = layer.module.weight.data
    return weight.T if layer.transposed else weight


def _storage(tensor: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return tensor.untyped_storage().data_ptr(), tuple(tensor.shape[-1:])


def _norm_like(module: nn.Module, width: int) -> bool:
    weight = getattr(module, "weight", None)
    return (
        not isinstance(module, nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 1
        and weight.numel() == width
        and not list(module.children())
    )


def _norm_offset(module: nn.Module, x: torch.Tensor) -> float | None:
    """c in output = f(x)·(c + w) + b, from the norm's output with w = 0 and with w = 1; None when
    the module is not affine in its weight that way (then nothing is folded into it)."""
    saved = {name: p.detach().clone() for name, p in module.named_parameters(recurse=False)}
    try:
        with torch.no_grad():
            for parameter in module.parameters(recurse=False):
                parameter.zero_()
            at_zero = module(x).float()
            module.weight.fill_(1.0)
            at_one = module(x).float()
    finally:
        with torch.no_grad():
            for name, parameter in module.named_parameters(recurse=False):
                parameter.copy_(saved[name])
    unit = at_one - at_zero
    denominator = (unit * unit).sum()
    if denominator <= 0:
        return None
    offset = ((at_zero * unit).sum() / denominator).item()
    return round(offset) if abs(offset - round(offset)) < 1e-3 else None


class _Probe:
    """One float32 forward of a block that records every module's output and every linear's input."""

    def __init__(self, block: nn.Module, inputs: BlockInputs) -> None:
        self.block = block
        self.call = next(inputs.calls())
        self.outputs: dict[str, torch.Tensor] = {}
        self.linear_inputs: dict[str, torch.Tensor] = {}
        self.norm_inputs: dict[str, torch.Tensor] = {}
        linears = {layer.module: layer.name for layer in find_linear_layers(block)}
        handles = []
        for name, module in block.named_modules():
            if not name:
                continue
            handles.append(module.register_forward_hook(self._keep_output(name)))
            handles.append(module.register_forward_pre_hook(self._keep_input(name, module in linears)))
        try:
            self.reference = self.run()
        finally:
            for handle in handles:
                handle.remove()

    def _keep_output(self, name: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and name not in self.outputs:
                self.outputs[name] = output  # held: no later tensor can take its storage

        return hook

    def _keep_input(self, name: str, is_linear: bool):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                (self.linear_inputs if is_linear else self.norm_inputs).setdefault(name, args[0])

        return hook

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        hidden, args, kwargs = self.call
        return block_output(self.block(hidden.float(), *args, **kwargs)).float()

    def unchanged(self) -> bool:
        change = (self.run() - self.reference).norm() / self.reference.norm().clamp_min(1e-12)
        return change.item() < EXACT_TOLERANCE


def _exact(probe: _Probe, group: ScaleGroup, layers: dict[str, LinearLayer], width: int, seed: int) -> bool:
    """Whether folding a random positive scale leaves the block's output as it was."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.exp((torch.rand(width, generator=generator) * 2 - 1) * PROBE_SPREAD)
    saved = {name: p.detach().clone() for name, p in probe.block.named_parameters()}
    try:
        group.fold(probe.block, layers, scale)
        return probe.unchanged()
    finally:
        with torch.no_grad():
            for name, parameter in probe.block.named_parameters():
                parameter.copy_(saved[name])


def find_scale_groups(
    block: nn.Module, inputs: BlockInputs, stages: list[list[LinearLayer]]
) -> list[ScaleGroup]:
    """The exact folds of `block`, in the order its stages run."""
    probe = _Probe(block, inputs)
    layers = {layer.name: layer for stage in stages for layer in stage}
    groups: list[ScaleGroup] = []
    for index, stage in enumerate(stages):
        width = stage[0].in_features
        consumers = tuple(layer.name for layer in stage)
        read = probe.linear_inputs.get(stage[0].name)
        candidates: list[ScaleGroup] = []
        for name, output in probe.outputs.items():
            module = block.get_submodule(name)
            if read is None or _storage(output) != _storage(read) or not _norm_like(module, width):
                continue
            offset = _norm_offset(module, probe.norm_inputs[name]) if name in probe.norm_inputs else None
            if offset is not None:
                candidates.append(ScaleGroup(name, consumers, float(offset)))
        candidates += [
            ScaleGroup(layer.name, consumers)
            for earlier in stages[:index]
            for layer in earlier
            if layer.out_features == width
        ]
        for candidate in candidates:
            if _exact(probe, candidate, layers, width, seed=len(groups)):
                groups.append(candidate)
                break
    return groups
