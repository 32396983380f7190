"""How much each head, MLP neuron, hidden channel and block matters: the scores pruning ranks by.

Width (heads, neurons, channels), higher is more important:
- `activation` (default, after Minitron): mean L2 norm of each head's contribution to the residual
  stream (its attention output through its own columns of the output projection), mean |activation|
  of each MLP neuron (the down projection's input), and mean |activation| of each hidden channel in
  every block's normalised inputs, over the calibration tokens. Collected block by block through the
  shared sequential calibration engine. Minitron scores a head by its attention output *before* the
  projection; on the demo models that choice lost to random head choices (docs/decisions.md).
- `magnitude`: L2 norm of the weights that belong to the unit (no data).
- `taylor`: first-order estimate of the loss change if the unit were removed, |Σ w·∂L/∂w| over its
  weights, with gradients accumulated over the calibration batches (needs a backward pass).
- `random`: a seeded baseline.

Depth (blocks): `influence` (1 − cosine of block input and output, averaged over tokens: a block
that barely changes the residual stream can go), `loss` (the measured calibration-loss increase
when the block is skipped), `random`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compress.calibrate import BlockInputs, block_output, calibrate_sequentially, run_block
from compress.modeling import DecoderLayout, discover_layout
from compress.prune.geometry import Architecture, Geometry, architecture, geometry

WIDTH_METHODS = ("activation", "magnitude", "taylor", "random")
DEPTH_METHODS = ("influence", "loss", "random")
BATCH_SIZE = 8


@dataclass
class Scores:
    """Per-unit importance; a field is None when that dimension is not being pruned."""

    heads: torch.Tensor | None = None  # [layers, query heads]
    mlp: torch.Tensor | None = None  # [layers, intermediate]
    hidden: torch.Tensor | None = None  # [hidden]
    layers: torch.Tensor | None = None  # [layers]


def _matrix(block: nn.Module, arch: Architecture, path: str) -> torch.Tensor:
    """A block matrix as [out, in] (GPT-2's Conv1D stores [in, out])."""
    weight = block.get_submodule(path).weight
    return weight.T if arch.conv1d else weight


def _segment(block: nn.Module, arch: Architecture, g: Geometry, matrices: dict, name: str) -> torch.Tensor:
    """The rows of segment `name` ("q", "gate", "up") of a possibly fused input projection."""
    sizes = {
        "q": g.num_heads * g.head_dim,
        "k": g.num_kv_heads * g.head_dim,
        "v": g.num_kv_heads * g.head_dim,
    }
    sizes |= {"gate": g.intermediate_size, "up": g.intermediate_size}
    for path, segments in matrices.items():
        if name in segments:
            start = sum(sizes[s] for s in segments[: segments.index(name)])
            return _matrix(block, arch, path)[start : start + sizes[name]]
    raise KeyError(name)


def _unit_parts(block: nn.Module, arch: Architecture, g: Geometry) -> dict[str, list[torch.Tensor]]:
    """The weight matrices each width unit owns, unit first: heads [heads, ·], neurons [intermediate, ·]."""
    heads = [
        _segment(block, arch, g, arch.attention_inputs, "q").reshape(g.num_heads, -1),
        _matrix(block, arch, arch.attention_output).T.reshape(g.num_heads, -1),
    ]
    mlp = [_segment(block, arch, g, arch.mlp_inputs, "up"), _matrix(block, arch, arch.mlp_output).T]
    if any("gate" in segments for segments in arch.mlp_inputs.values()):
        mlp.append(_segment(block, arch, g, arch.mlp_inputs, "gate"))
    return {"heads": heads, "mlp": mlp}


def _residual_parts(model: nn.Module, layout: DecoderLayout, arch: Architecture) -> list[torch.Tensor]:
    """Every matrix that reads or writes the residual stream, channel first: [hidden, ·]."""
    parts = [layout.embeddings.weight.T]
    for block in layout.blocks:
        parts += [_matrix(block, arch, path).T for path in (*arch.attention_inputs, *arch.mlp_inputs)]
        parts += [_matrix(block, arch, path) for path in (arch.attention_output, arch.mlp_output)]
    return parts


#: How a unit's weights become one number: summed per part (so no part is ever concatenated), then
#: finished. Magnitude is the L2 norm of the weights; Taylor is |Σ w·∂L/∂w| over them.
_REDUCERS: dict[
    str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
] = {
    "magnitude": (lambda rows: rows.float().pow(2).sum(dim=1), torch.sqrt),
    "taylor": (lambda rows: rows.float().sum(dim=1), torch.abs),
}


@torch.no_grad()
def _weight_scores(model: nn.Module, need: set[str], method: str) -> Scores:
    partial, finish = _REDUCERS[method]
    layout, arch, g = discover_layout(model), architecture(model.config), geometry(model)

    def reduce(parts: list[torch.Tensor]) -> torch.Tensor:
        return finish(torch.stack([partial(part) for part in parts]).sum(dim=0))

    scores = Scores()
    units = [_unit_parts(block, arch, g) for block in layout.blocks] if need & {"heads", "mlp"} else []
    if "heads" in need:
        scores.heads = torch.stack([reduce(u["heads"]) for u in units])
    if "mlp" in need:
        scores.mlp = torch.stack([reduce(u["mlp"]) for u in units])
    if "hidden" in need:
        scores.hidden = reduce(_residual_parts(model, layout, arch))
    return scores


def magnitude_scores(model: nn.Module, need: set[str]) -> Scores:
    return _weight_scores(model, need, "magnitude")


def random_scores(model: nn.Module, need: set[str], seed: int) -> Scores:
    g = geometry(model)
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "heads": (g.num_layers, g.num_heads),
        "mlp": (g.num_layers, g.intermediate_size),
        "hidden": (g.hidden_size,),
        "layers": (g.num_layers,),
    }
    return Scores(**{name: torch.rand(shapes[name], generator=generator) for name in need})


def _batches(calibration: torch.Tensor, device: torch.device):
    for start in range(0, calibration.shape[0], BATCH_SIZE):
        yield calibration[start : start + BATCH_SIZE].to(device)


def taylor_scores(model: nn.Module, calibration: torch.Tensor, need: set[str]) -> Scores:
    """|Σ w·g| per unit, g the gradient of the calibration loss summed over batches."""
    device = next(model.parameters()).device
    parameters = dict(model.named_parameters())
    weights = {name: p.data for name, p in parameters.items()}
    model.zero_grad(set_to_none=True)
    for parameter in parameters.values():
        parameter.requires_grad_(True)
    try:
        for batch in _batches(calibration, device):
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
        # Each weight is swapped for w·g so the per-unit slicing that magnitude uses serves here too.
        for name, parameter in parameters.items():
            if parameter.grad is not None:
                parameter.data = weights[name] * parameter.grad
        return _weight_scores(model, need, "taylor")
    finally:
        for name, parameter in parameters.items():
            parameter.data = weights[name]
            parameter.grad = None
            parameter.requires_grad_(False)


def activation_scores(model: nn.Module, calibration: torch.Tensor, need: set[str]) -> Scores:
    """Activation statistics (Minitron's, heads through the output projection) and block influence,
    block by block through the engine."""
    layout, arch, g = discover_layout(model), architecture(model.config), geometry(model)
    heads = torch.zeros(g.num_layers, g.num_heads)
    mlp = torch.zeros(g.num_layers, g.intermediate_size)
    hidden = torch.zeros(g.hidden_size)
    influence = torch.zeros(g.num_layers)
    readers = [next(iter(arch.attention_inputs)), next(iter(arch.mlp_inputs))]

    def transform(index: int, block: nn.Module, inputs: BlockInputs, stages) -> None:
        tokens = sum(h.shape[0] * h.shape[1] for h in inputs.hidden)

        def on_attention(module, args):
            x = args[0].detach().float().reshape(-1, g.num_heads, g.head_dim)
            contribution = torch.einsum("thd,ohd->tho", x, output_weight)
            heads[index] += contribution.norm(dim=2).sum(dim=0).cpu() / tokens

        def on_mlp(module, args):
            mlp[index] += (
                args[0].detach().float().reshape(-1, g.intermediate_size).abs().sum(0).cpu() / tokens
            )

        def on_reader(module, args):
            hidden.add_(args[0].detach().float().reshape(-1, g.hidden_size).abs().sum(0).cpu() / tokens)

        def on_block(module, args, kwargs, output):
            before = (args[0] if args else kwargs["hidden_states"]).detach().float()
            after = block_output(output).detach().float()
            influence[index] += (1 - F.cosine_similarity(before, after, dim=-1)).sum().cpu() / tokens

        hooks: list[tuple[str, Callable]] = []
        if "heads" in need:
            # [hidden, heads, head_dim]: each head's own columns of the output projection
            output_weight = _matrix(block, arch, arch.attention_output).float()
            output_weight = output_weight.reshape(-1, g.num_heads, g.head_dim)
            hooks.append((arch.attention_output, on_attention))
        if "mlp" in need:
            hooks.append((arch.mlp_output, on_mlp))
        if "hidden" in need:
            hooks += [(path, on_reader) for path in readers]
        handles = [block.get_submodule(path).register_forward_pre_hook(hook) for path, hook in hooks]
        if "layers" in need:
            handles.append(block.register_forward_hook(on_block, with_kwargs=True))
        try:
            run_block(block, inputs)
        finally:
            for handle in handles:
                handle.remove()

    calibrate_sequentially(model, layout, calibration, transform, BATCH_SIZE, "importance")
    scores = Scores(heads=heads, mlp=mlp, hidden=hidden, layers=influence)
    for name in ("heads", "mlp", "hidden", "layers"):
        if name not in need:
            setattr(scores, name, None)
    return scores


@torch.inference_mode()
def calibration_loss(model: nn.Module, calibration: torch.Tensor) -> float:
    device = next(model.parameters()).device
    losses = [
        model(input_ids=b, labels=b, use_cache=False).loss.item() for b in _batches(calibration, device)
    ]
    return sum(losses) / len(losses)


def loss_scores(model: nn.Module, calibration: torch.Tensor) -> torch.Tensor:
    """The calibration-loss increase when each block is skipped (its input passed straight through)."""
    layout = discover_layout(model)
    reference = calibration_loss(model, calibration)

    def skip(module, args, kwargs, output):
        before = args[0] if args else kwargs["hidden_states"]
        return (before, *output[1:]) if isinstance(output, tuple) else before

    increases = []
    for block in layout.blocks:
        handle = block.register_forward_hook(skip, with_kwargs=True)
        try:
            increases.append(calibration_loss(model, calibration) - reference)
        finally:
            handle.remove()
    return torch.tensor(increases)


def width_scores(
    model: nn.Module, method: str, calibration: torch.Tensor | None, need: set[str], seed: int
) -> Scores:
    if not need:
        return Scores()
    if method == "magnitude":
        return magnitude_scores(model, need)
    if method == "random":
        return random_scores(model, need, seed)
    if method == "taylor":
        return taylor_scores(model, calibration, need)
    return activation_scores(model, calibration, need)


def depth_scores(model: nn.Module, method: str, calibration: torch.Tensor | None, seed: int) -> torch.Tensor:
    if method == "random":
        return random_scores(model, {"layers"}, seed).layers
    if method == "loss":
        return loss_scores(model, calibration)
    return activation_scores(model, calibration, {"layers"}).layers
