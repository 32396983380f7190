"""Structured-pruning surgery: shrink a loaded model in place to the indices an importance score kept.

Each function checks the indices, checks the config the result will have (before any weight
changes), slices the tensors, updates `model.config`, and then *rebuilds* every changed decoder
block from that config and loads the sliced tensors into it. Rebuilding, rather than patching
attributes such as `num_key_value_groups`, `head_dim`, `scaling`, Conv1D's `nf` or Qwen's
`layer_type`, makes the in-memory model run exactly what `from_pretrained` builds from the saved
config, and `load_state_dict(strict=True)` checks every sliced shape against it.

The config stays standard (one size for all layers), so every layer must keep the same number of
heads or MLP channels, though not the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from compress.errors import CompressError
from compress.modeling import DecoderLayout, discover_layout
from compress.prune.geometry import (
    Architecture,
    Geometry,
    architecture,
    config_geometry,
    geometry,
    heads_unsupported,
    pruned_config,
    resize_config,
)

State = dict[str, torch.Tensor]


# --- public API -----------------------------------------------------------------------------------


@torch.no_grad()
def prune_attention_heads(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> None:
    """Keep the query heads `keep[layer]` in every layer, and the KV heads they read.

    A KV head stays when any query head of its group stays. The config has one group size, so each
    layer must either drop whole KV groups (every kept group keeps all its query heads) or keep
    every KV head with the same number of query heads in each group; anything else is an error.
    """
    g, arch, layout = geometry(model), architecture(model.config), discover_layout(model)
    if arch.head_dim_from_hidden:
        raise CompressError(heads_unsupported(g.model_type))
    heads = _per_layer_indices(keep, g.num_layers, g.num_heads, "query heads")
    kv_heads = {layer: _kv_heads_read(layer, kept, g) for layer, kept in heads.items()}
    num_kv_heads = _same_count(kv_heads, "KV heads")
    num_heads = len(heads[0])
    pruned_config(model.config, num_heads=num_heads, num_kv_heads=num_kv_heads)
    states = [_state(block) for block in layout.blocks]
    for layer, state in enumerate(states):
        _slice_heads(state, arch, g, heads[layer], kv_heads[layer])
    resize_config(model.config, num_heads=num_heads, num_kv_heads=num_kv_heads)
    _replace_blocks(layout, arch, model.config, states)


@torch.no_grad()
def prune_mlp_channels(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> None:
    """Keep the intermediate neurons `keep[layer]` of every layer's MLP."""
    g, arch, layout = geometry(model), architecture(model.config), discover_layout(model)
    neurons = _per_layer_indices(keep, g.num_layers, g.intermediate_size, "MLP channels")
    size = len(neurons[0])
    pruned_config(model.config, intermediate_size=size)
    states = [_state(block) for block in layout.blocks]
    for layer, state in enumerate(states):
        _slice_mlp(state, arch, g, neurons[layer])
    resize_config(model.config, intermediate_size=size)
    _replace_blocks(layout, arch, model.config, states)


@torch.no_grad()
def prune_hidden_channels(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep the residual-stream channels `keep` everywhere: embeddings, every block, head.

    Every norm that reads the residual stream has its gain multiplied by sqrt(old/new hidden size)
    (Gemma: (1 + w') = (1 + w) · c). A norm divides by the RMS over the channels it sees; over fewer
    channels, of which the dropped ones carried little energy, that RMS grows by sqrt(old/new), and
    the gain puts the normalised scale back. When the dropped channels are exactly zero, RMSNorm's
    output on the kept channels is unchanged (up to eps), so pruning them preserves the logits;
    LayerNorm's too, when the residual stream also has zero mean (it centres first).

    Gemma multiplies embeddings by sqrt(hidden_size), recomputed from the config on load. The
    embedding rows are multiplied by sqrt(old/new) so the product is unchanged; with tied embeddings
    the LM head sees the same factor, which the final norm's gain divides back out, so both ends
    stay exact.

    GPT-2 and OPT have no head_dim setting: every head shrinks to new_hidden // num_heads dimensions
    (see `_narrow_heads`), so the new hidden size must be a multiple of the number of heads.
    """
    g, arch, layout = geometry(model), architecture(model.config), discover_layout(model)
    channels = _kept_indices(keep, g.hidden_size, "hidden channels")
    hidden = len(channels)
    pruned_config(model.config, hidden_size=hidden)
    gain = math.sqrt(g.hidden_size / hidden)
    states = [_state(block) for block in layout.blocks]
    for state in states:
        _slice_residual(state, arch, channels, gain)
        if arch.head_dim_from_hidden:
            _narrow_heads(state, arch, g, hidden // g.num_heads)
    _slice_residual_ends(model, layout, arch, channels, gain)
    resize_config(model.config, hidden_size=hidden)
    _replace_blocks(layout, arch, model.config, states)


@torch.no_grad()
def remove_blocks(model: nn.Module, remove: Sequence[int]) -> None:
    """Delete the decoder blocks `remove`; the others are renumbered and keep their attention types.

    The new number is each attention's `layer_idx`, its slot in the KV cache. On GPT-2 with
    `scale_attn_by_inverse_layer_idx` it also sets the attention scale, 1 / (layer_idx + 1); the
    rebuild folds the change into the query projection.
    """
    g, arch, layout = geometry(model), architecture(model.config), discover_layout(model)
    removed = set(_checked_indices(remove, g.num_layers, "blocks to remove").tolist())
    kept = [index for index in range(g.num_layers) if index not in removed]
    if not kept:
        raise CompressError(f"removing all {g.num_layers} blocks leaves no model; keep at least one")
    pruned_config(model.config, num_layers=len(kept))
    resize_config(model.config, kept_layers=kept)
    for index in sorted(removed, reverse=True):
        del layout.blocks[index]
    _replace_blocks(layout, arch, model.config, [_state(block) for block in layout.blocks])


# --- checking indices -----------------------------------------------------------------------------


def _checked_indices(values: Sequence[int], size: int, what: str) -> torch.Tensor:
    """Sorted indices; sorting keeps kept query heads ordered by KV group, as the model reads them."""
    chosen = sorted({int(value) for value in values})
    if len(chosen) != len(values):
        raise CompressError(f"{what}: an index is listed twice")
    if chosen and not 0 <= chosen[0] <= chosen[-1] < size:
        raise CompressError(f"{what}: indices must be in 0..{size - 1}, got {chosen[0]}..{chosen[-1]}")
    return torch.tensor(chosen, dtype=torch.long)


def _kept_indices(values: Sequence[int], size: int, what: str) -> torch.Tensor:
    chosen = _checked_indices(values, size, what)
    if not len(chosen):
        raise CompressError(f"{what}: keeps none of {size}; keep at least one")
    return chosen


def _per_layer_indices(
    keep: Mapping[int, Sequence[int]], num_layers: int, size: int, what: str
) -> dict[int, torch.Tensor]:
    if set(keep) != set(range(num_layers)):
        raise CompressError(
            f"{what}: give the kept indices of every layer 0..{num_layers - 1}, got {sorted(keep)}"
        )
    indices = {
        layer: _kept_indices(keep[layer], size, f"{what} of layer {layer}") for layer in range(num_layers)
    }
    _same_count(indices, what)
    return indices


def _same_count(indices: Mapping[int, torch.Tensor], what: str) -> int:
    """The one count every layer keeps: the config has a single size for all layers."""
    counts = sorted({len(kept) for kept in indices.values()})
    if len(counts) > 1:
        raise CompressError(
            f"every layer must keep the same number of {what} (the config has one size), got {counts}"
        )
    return counts[0]


def _kv_heads_read(layer: int, heads: torch.Tensor, g: Geometry) -> torch.Tensor:
    """The KV heads the kept query heads read, if the layout is one a uniform config can express."""
    per_group = torch.bincount(heads // g.group_size, minlength=g.num_kv_heads)
    groups = per_group.nonzero().flatten()
    counts = per_group[groups]
    whole_groups = bool((counts == g.group_size).all())
    even_spread = len(groups) == g.num_kv_heads and int(counts.min()) == int(counts.max())
    if whole_groups or even_spread:
        return groups
    n = len(heads)
    if n % g.group_size and n % g.num_kv_heads:
        raise CompressError(
            f"{n} query heads per layer cannot be spread evenly over {g.num_kv_heads} KV groups nor fill "
            f"whole groups of {g.group_size}; keep a multiple of {g.group_size} or of {g.num_kv_heads}"
        )
    raise CompressError(
        f"layer {layer} keeps {per_group.tolist()} query heads in its {g.num_kv_heads} KV groups; keep whole "
        f"groups of {g.group_size} or the same number of query heads in every group"
    )


# --- slicing a block's tensors --------------------------------------------------------------------


def _state(block: nn.Module) -> State:
    return dict(block.state_dict())


def _out_axis(arch: Architecture) -> int:
    return 1 if arch.conv1d else 0


def _select(state: State, key: str, axis: int, index: torch.Tensor) -> None:
    state[key] = state[key].index_select(axis, index.to(state[key].device))


def _take_outputs(state: State, arch: Architecture, matrix: str, index: torch.Tensor) -> None:
    _select(state, f"{matrix}.weight", _out_axis(arch), index)
    if f"{matrix}.bias" in state:
        _select(state, f"{matrix}.bias", 0, index)


def _take_inputs(state: State, arch: Architecture, matrix: str, index: torch.Tensor) -> None:
    _select(state, f"{matrix}.weight", 1 - _out_axis(arch), index)


def _segment_sizes(g: Geometry) -> dict[str, int]:
    kv_width = g.num_kv_heads * g.head_dim
    return {
        "q": g.num_heads * g.head_dim,
        "k": kv_width,
        "v": kv_width,
        "gate": g.intermediate_size,
        "up": g.intermediate_size,
    }


def _take_segments(
    state: State,
    arch: Architecture,
    matrices: Mapping[str, tuple[str, ...]],
    sizes: Mapping[str, int],
    index: Mapping[str, torch.Tensor],
) -> None:
    """Keep `index[segment]` within each segment of each matrix's (possibly fused) output axis."""
    for matrix, segments in matrices.items():
        offsets = [sum(sizes[s] for s in segments[:position]) for position in range(len(segments))]
        combined = torch.cat([index[s] + offset for s, offset in zip(segments, offsets, strict=True)])
        _take_outputs(state, arch, matrix, combined)


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _slice_heads(
    state: State, arch: Architecture, g: Geometry, heads: torch.Tensor, kv_heads: torch.Tensor
) -> None:
    kv_rows = _head_rows(kv_heads, g.head_dim)
    rows = {"q": _head_rows(heads, g.head_dim), "k": kv_rows, "v": kv_rows}
    _take_segments(state, arch, arch.attention_inputs, _segment_sizes(g), rows)
    _take_inputs(state, arch, arch.attention_output, rows["q"])


def _slice_mlp(state: State, arch: Architecture, g: Geometry, neurons: torch.Tensor) -> None:
    _take_segments(state, arch, arch.mlp_inputs, _segment_sizes(g), {"gate": neurons, "up": neurons})
    _take_inputs(state, arch, arch.mlp_output, neurons)


def _rescaled_gain(weight: torch.Tensor, keep: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
    """Kept entries of a norm weight whose effective gain (offset + w) is multiplied by `gain`."""
    kept = weight.index_select(0, keep.to(weight.device)).float()
    return ((kept + offset) * gain - offset).to(weight.dtype)


def _slice_residual(state: State, arch: Architecture, keep: torch.Tensor, gain: float) -> None:
    """Keep residual channels in a block: inputs of the readers, outputs of the two writers, norms."""
    for matrix in (*arch.attention_inputs, *arch.mlp_inputs):
        _take_inputs(state, arch, matrix, keep)
    for matrix in (arch.attention_output, arch.mlp_output):
        _take_outputs(state, arch, matrix, keep)
    for norm in arch.norms:
        if f"{norm}.weight" in state:  # OPT allows a LayerNorm without affine parameters
            state[f"{norm}.weight"] = _rescaled_gain(state[f"{norm}.weight"], keep, gain, arch.norm_offset)
        if f"{norm}.bias" in state:
            _select(state, f"{norm}.bias", 0, keep)


def _segment_location(arch: Architecture, segment: str, sizes: Mapping[str, int]) -> tuple[str, int]:
    """The attention input matrix holding `segment`, and where the segment starts in its output axis."""
    for matrix, segments in arch.attention_inputs.items():
        if segment in segments:
            return matrix, sum(sizes[s] for s in segments[: segments.index(segment)])
    raise KeyError(segment)


def _head_vectors(state: State, arch: Architecture, segment: str, g: Geometry) -> torch.Tensor:
    """[heads, head_dim, features]: each output dimension's weights and bias, for ranking."""
    sizes = _segment_sizes(g)
    matrix, start = _segment_location(arch, segment, sizes)
    rows = state[f"{matrix}.weight"].movedim(_out_axis(arch), 0).narrow(0, start, sizes[segment]).float()
    if f"{matrix}.bias" in state:
        bias = state[f"{matrix}.bias"].narrow(0, start, sizes[segment]).float()
        rows = torch.cat([rows, bias[:, None]], dim=1)
    return rows.reshape(-1, g.head_dim, rows.shape[1])


def _top_dims(score: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the `count` best dimensions of each head in `score` [heads, head_dim]."""
    best = torch.argsort(score, dim=1, descending=True, stable=True)[:, :count].sort(dim=1).values
    heads = torch.arange(score.shape[0], device=score.device)
    return (best + heads[:, None] * score.shape[1]).flatten()


def _narrow_heads(state: State, arch: Architecture, g: Geometry, head_dim: int) -> None:
    """Shrink every head to `head_dim` dimensions (GPT-2 and OPT, whose head size is hidden // heads).

    Query and key share the dimensions they dot over; value and output share theirs; the two sets
    are chosen independently per head, by the product of the weight norms on each side (bias
    included). That data-free rank drops exactly the dimensions that cannot contribute (a zero query
    or output row) first, so pruning dead dimensions is exact; the attention-scale change
    (head_dim ** -0.5) is folded into the queries when the block is rebuilt.
    """
    q, k, v = (_head_vectors(state, arch, segment, g) for segment in ("q", "k", "v"))
    out = state[f"{arch.attention_output}.weight"].movedim(1 - _out_axis(arch), 0).float()
    out = out.reshape(g.num_heads, g.head_dim, -1)
    qk = _top_dims(q.norm(dim=-1) * k.norm(dim=-1), head_dim)
    vo = _top_dims(v.norm(dim=-1) * out.norm(dim=-1), head_dim)
    _take_segments(state, arch, arch.attention_inputs, _segment_sizes(g), {"q": qk, "k": qk, "v": vo})
    _take_inputs(state, arch, arch.attention_output, vo)


def _scale_queries(state: State, arch: Architecture, g: Geometry, factor: float) -> None:
    """Multiply the query projection (weight and bias) by `factor`, out of place."""
    sizes = _segment_sizes(g)
    matrix, start = _segment_location(arch, "q", sizes)
    for key, axis in ((f"{matrix}.weight", _out_axis(arch)), (f"{matrix}.bias", 0)):
        if key in state:
            scaled = state[key].clone()
            scaled.narrow(axis, start, sizes["q"]).mul_(factor)
            state[key] = scaled


# --- rebuilding blocks ----------------------------------------------------------------------------


def _rebuild(block: nn.Module, state: State, config, layer_idx: int, arch: Architecture) -> nn.Module:
    """A fresh block of the same class built from `config`, holding the tensors in `state`.

    If the attention scale changed (GPT-2/OPT head size, GPT-2's 1 / (layer_idx + 1)), the ratio is
    folded into the queries so the scores stay the same. Only GPT-2 and OPT can change it, and they
    have no norm after the query projection that would undo the factor.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        new = type(block)(config, layer_idx)
    factor = block.get_submodule(arch.attention).scaling / new.get_submodule(arch.attention).scaling
    if factor != 1.0:
        _scale_queries(state, arch, config_geometry(config), factor)
    new.load_state_dict(state, strict=True, assign=True)
    return new.train(block.training)


def _replace_blocks(layout: DecoderLayout, arch: Architecture, config, states: list[State]) -> None:
    for index, state in enumerate(states):
        layout.blocks[index] = _rebuild(layout.blocks[index], state, config, index, arch)


# --- outside the blocks ---------------------------------------------------------------------------


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def _optional_module(model: nn.Module, path: str | None) -> nn.Module | None:
    """The module at `path`, or None where the path or the module is absent (OPT's project_in)."""
    if path is None:
        return None
    module: nn.Module | None = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def _slice_embedding(embedding: nn.Embedding, keep: torch.Tensor, scale: float) -> None:
    weight = embedding.weight.index_select(1, keep.to(embedding.weight.device))
    if scale != 1.0:
        weight = (weight.float() * scale).to(weight.dtype)
    _set_parameter(embedding, "weight", weight)
    embedding.embedding_dim = len(keep)


def _slice_linear(linear: nn.Linear, keep: torch.Tensor, *, outputs: bool) -> None:
    """Keep `keep` among a Linear's outputs (weight rows and bias) or inputs (weight columns)."""
    keep = keep.to(linear.weight.device)
    _set_parameter(linear, "weight", linear.weight.index_select(0 if outputs else 1, keep))
    if outputs and linear.bias is not None:
        _set_parameter(linear, "bias", linear.bias.index_select(0, keep))
    if outputs:
        linear.out_features = len(keep)
    else:
        linear.in_features = len(keep)


def _slice_norm(norm: nn.Module, keep: torch.Tensor, gain: float, offset: float) -> None:
    if getattr(norm, "weight", None) is not None:
        _set_parameter(norm, "weight", _rescaled_gain(norm.weight, keep, gain, offset))
    if getattr(norm, "bias", None) is not None:
        _set_parameter(norm, "bias", norm.bias.index_select(0, keep.to(norm.bias.device)))
    if hasattr(norm, "normalized_shape"):  # LayerNorm's forward reads it
        norm.normalized_shape = (len(keep),)


def _rescale_embedding_normaliser(embedding: nn.Module, hidden_size: int) -> None:
    """Gemma's sqrt(hidden_size) embedding multiplier, set as loading the pruned config will set it."""
    embedding.scalar_embed_scale = hidden_size**0.5
    embedding.embed_scale.fill_(hidden_size**0.5)


def _slice_residual_ends(
    model: nn.Module, layout: DecoderLayout, arch: Architecture, keep: torch.Tensor, gain: float
) -> None:
    """Embeddings (or OPT's project_in), position embeddings, final norm, LM head (or project_out)."""
    embeddings, head = layout.embeddings, layout.lm_head
    tied = head is not None and head.weight is embeddings.weight
    project_in = _optional_module(model, arch.project_in)
    project_out = _optional_module(model, arch.project_out)
    embedding_scale = 1.0
    if project_in is not None:
        _slice_linear(project_in, keep, outputs=True)
    else:
        embedding_scale = gain if arch.embedding_scaled else 1.0
        _slice_embedding(embeddings, keep, embedding_scale)
        if arch.embedding_scaled:
            _rescale_embedding_normaliser(embeddings, len(keep))
    positions = _optional_module(model, arch.position_embeddings)
    if positions is not None:
        _slice_embedding(positions, keep, 1.0)
    if layout.final_norm is not None:
        final_gain = gain / embedding_scale if tied else gain
        _slice_norm(layout.final_norm, keep, final_gain, arch.norm_offset)
    if project_out is not None:
        _slice_linear(project_out, keep, outputs=False)
    elif tied:
        head.weight = embeddings.weight
        head.in_features = len(keep)
    elif head is not None:
        _slice_linear(head, keep, outputs=False)
