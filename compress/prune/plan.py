"""What to prune: the sizes a `PruneConfig` leads to, and which units the scores keep.

Targets are fractions to remove (`--mlp 0.3` removes 30% of the MLP channels) or absolute sizes
(`--mlp-size 1024`, `--heads-keep 6`, `--layers-keep 10`); `--layers N` removes N blocks. Sizes are
uniform across layers so the result is a standard config; a fractional MLP target keeps a width
that was a multiple of 64 one (so quantization groups and kernels still fit it); which units go is
chosen per layer (per model for the hidden size) by importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.errors import CompressError
from compress.prune.config import PruneConfig
from compress.prune.geometry import Architecture, Geometry, architecture, config_geometry, heads_unsupported

#: Model types whose config requires hidden_size % num_attention_heads == 0.
HIDDEN_DIVISIBLE_BY_HEADS = ("llama", "gpt2", "opt")


@dataclass(frozen=True)
class Sizes:
    """The pruned model's sizes; None where a dimension is unchanged."""

    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None

    @property
    def width(self) -> set[str]:
        """The width dimensions being pruned, named as `Scores` fields."""
        named = {"heads": self.num_heads, "mlp": self.intermediate_size, "hidden": self.hidden_size}
        return {name for name, value in named.items() if value is not None}


def _removed(fraction: float | None, keep: int | None, total: int, what: str) -> int:
    if keep is not None:
        if keep > total:
            raise CompressError(f"cannot keep {keep} {what}: the model has {total}")
        return total - keep
    return round(fraction * total) if fraction is not None else 0


def _head_sizes(config: PruneConfig, g: Geometry, arch: Architecture) -> tuple[int | None, int | None]:
    removed = _removed(config.heads, config.heads_keep, g.num_heads, "query heads")
    if removed == 0:
        return None, None
    if arch.head_dim_from_hidden:
        raise CompressError(heads_unsupported(g.model_type))
    if removed >= g.num_heads:
        raise CompressError(f"cannot remove all {g.num_heads} query heads")
    groups_ok = removed % g.group_size == 0
    per_group_ok = removed % g.num_kv_heads == 0 and g.num_kv_heads < g.num_heads
    mode = config.head_grouping
    if mode == "auto":
        mode = "groups" if groups_ok else "per-group" if per_group_ok else "none"
    if mode == "groups" and groups_ok:
        return g.num_heads - removed, g.num_kv_heads - removed // g.group_size
    if mode == "per-group" and per_group_ok:
        return g.num_heads - removed, g.num_kv_heads
    raise CompressError(
        f"removing {removed} of {g.num_heads} query heads breaks GQA grouping ({g.num_kv_heads} KV groups "
        f"of {g.group_size}): remove a multiple of {g.group_size} (whole groups)"
        + (
            f" or of {g.num_kv_heads} (the same number from every group)"
            if g.num_kv_heads < g.num_heads
            else ""
        )
    )


def _hidden_multiple(g: Geometry, num_heads: int | None) -> int:
    """What the hidden size must stay a multiple of: the head count where the config checks it
    (transformers' LlamaConfig does even with an explicit head_dim; GPT-2 and OPT derive head_dim
    from it), else 1."""
    heads = num_heads or g.num_heads
    return heads if g.model_type in HIDDEN_DIVISIBLE_BY_HEADS else 1


#: A fractional MLP target keeps a width that was a multiple of this one (widths of at least 16
#: multiples: small test models are cut exactly as asked).
KERNEL_WIDTH_MULTIPLE = 64


def _keeps_kernel_width(width: int) -> bool:
    return width % KERNEL_WIDTH_MULTIPLE == 0 and width >= 16 * KERNEL_WIDTH_MULTIPLE


def _round_to(size: int, multiple: int, limit: int) -> int:
    """The multiple of `multiple` nearest to `size`, at least one multiple and at most `limit`."""
    rounded = max(multiple, round(size / multiple) * multiple)
    return min(rounded, limit - limit % multiple)


def plan_sizes(config: PruneConfig, model_config) -> Sizes:
    """The target sizes, checked against the model; one-line errors for impossible requests."""
    arch, g = architecture(model_config), config_geometry(model_config)
    num_heads, num_kv_heads = _head_sizes(config, g, arch)
    mlp_removed = _removed(config.mlp, config.mlp_size, g.intermediate_size, "MLP channels")
    if config.mlp is not None and mlp_removed and _keeps_kernel_width(g.intermediate_size):
        # Keep the width a multiple of 64, as it was: quantization groups and kernels need it
        # (SmolLM2's 1536 − 10% = 1382 = 2 × 691 would leave groups of 2).
        kept = _round_to(g.intermediate_size - mlp_removed, KERNEL_WIDTH_MULTIPLE, g.intermediate_size)
        mlp_removed = g.intermediate_size - kept or mlp_removed
    hidden_removed = _removed(config.hidden, config.hidden_size, g.hidden_size, "hidden channels")
    if config.hidden is not None and hidden_removed:
        hidden_removed = g.hidden_size - _round_to(
            g.hidden_size - hidden_removed, _hidden_multiple(g, num_heads), g.hidden_size
        )
    if config.layers_keep is not None and config.layers_keep > g.num_layers:
        raise CompressError(f"cannot keep {config.layers_keep} layers: the model has {g.num_layers}")
    layers_removed = config.layers or 0
    if config.layers_keep is not None:
        layers_removed = g.num_layers - config.layers_keep
    if layers_removed >= g.num_layers:
        raise CompressError(f"cannot remove every layer: the model has {g.num_layers}")
    if mlp_removed >= g.intermediate_size:
        raise CompressError(f"cannot remove all {g.intermediate_size} MLP channels")
    if hidden_removed >= g.hidden_size:
        raise CompressError(f"cannot remove all {g.hidden_size} hidden channels")
    return Sizes(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=g.intermediate_size - mlp_removed if mlp_removed else None,
        hidden_size=g.hidden_size - hidden_removed if hidden_removed else None,
        num_layers=g.num_layers - layers_removed if layers_removed else None,
    )


def top_indices(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` highest scores, in ascending index order (ties broken by index)."""
    return sorted(torch.argsort(scores, descending=True, stable=True)[:count].tolist())


def kept_heads(scores: torch.Tensor, g: Geometry, num_heads: int, num_kv_heads: int) -> dict[int, list[int]]:
    """Per layer: whole KV groups ranked by their heads' summed score, or the best heads of every group."""
    kept = {}
    for layer, layer_scores in enumerate(scores):
        grouped = layer_scores.reshape(g.num_kv_heads, g.group_size)
        if num_kv_heads < g.num_kv_heads:
            groups = top_indices(grouped.sum(dim=1), num_kv_heads)
            kept[layer] = [group * g.group_size + h for group in groups for h in range(g.group_size)]
        else:
            per_group = num_heads // g.num_kv_heads
            kept[layer] = sorted(
                group * g.group_size + h
                for group in range(g.num_kv_heads)
                for h in top_indices(grouped[group], per_group)
            )
    return kept


def kept_per_layer(scores: torch.Tensor, count: int) -> dict[int, list[int]]:
    return {layer: top_indices(layer_scores, count) for layer, layer_scores in enumerate(scores)}


def removed_layers(scores: torch.Tensor, keep: int) -> list[int]:
    """The blocks with the lowest scores, so that `keep` remain."""
    kept = set(top_indices(scores, keep))
    return [layer for layer in range(len(scores)) if layer not in kept]


def summarize(scores: torch.Tensor, kept_mask: torch.Tensor) -> dict[str, float]:
    """Scores of what stayed and what went: the report's evidence that importance separated them."""
    values = scores.flatten().float()
    mask = kept_mask.flatten()
    summary = {"min": values.min().item(), "median": values.median().item(), "max": values.max().item()}
    if mask.any():
        summary["kept_mean"] = values[mask].mean().item()
    if (~mask).any():
        summary["removed_mean"] = values[~mask].mean().item()
    return summary
