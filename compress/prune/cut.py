"""Apply a plan to a model in place: which units each dimension keeps, the surgery, and the report.

Shared by `compress prune` and by distillation students cut from their teacher, so it lives
beside the surgery rather than in either command's runner.
"""

from __future__ import annotations

from typing import Any

import torch

from compress.prune.geometry import geometry
from compress.prune.importance import Scores
from compress.prune.plan import (
    Sizes,
    kept_heads,
    kept_per_layer,
    removed_layers,
    summarize,
    top_indices,
)
from compress.prune.surgery import (
    prune_attention_heads,
    prune_hidden_channels,
    prune_mlp_channels,
    remove_blocks,
)


def cut(model: torch.nn.Module, sizes: Sizes, scores: Scores) -> dict[str, Any]:
    """Apply the plan in place; returns what was removed where, with the importance summaries."""
    g = geometry(model)
    report: dict[str, Any] = {"removed": {}, "importance": {}}
    if sizes.num_heads is not None:
        keep = kept_heads(scores.heads, g, sizes.num_heads, sizes.num_kv_heads)
        prune_attention_heads(model, keep)
        report["removed"]["heads"] = _complement(keep, g.num_heads)
        report["importance"]["heads"] = summarize(scores.heads, _mask(scores.heads.shape, keep))
    if sizes.intermediate_size is not None:
        keep = kept_per_layer(scores.mlp, sizes.intermediate_size)
        prune_mlp_channels(model, keep)
        report["removed"]["mlp"] = _complement(keep, g.intermediate_size)
        report["importance"]["mlp"] = summarize(scores.mlp, _mask(scores.mlp.shape, keep))
    if sizes.hidden_size is not None:
        keep_channels = top_indices(scores.hidden, sizes.hidden_size)
        prune_hidden_channels(model, keep_channels)
        report["removed"]["hidden"] = sorted(set(range(g.hidden_size)) - set(keep_channels))
        report["importance"]["hidden"] = summarize(
            scores.hidden, _mask((1, g.hidden_size), {0: keep_channels})
        )
    if sizes.num_layers is not None:
        remove = removed_layers(scores.layers, sizes.num_layers)
        remove_blocks(model, remove)
        report["removed"]["layers"] = remove
        report["importance"]["layers"] = [round(value, 6) for value in scores.layers.tolist()]
    return report


def _complement(keep: dict[int, list[int]], total: int) -> dict[str, list[int]]:
    """Per layer, the units that were not kept (the report's "what was removed where")."""
    return {str(layer): sorted(set(range(total)) - set(kept)) for layer, kept in keep.items()}


def _mask(shape: tuple[int, ...], keep: dict[int, list[int]]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, kept in keep.items():
        mask[row, kept] = True
    return mask
