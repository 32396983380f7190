"""How a packed model runs: the activation dtype it computes in, and the kernel of every layer.

Separate from loading (`packed.py`) because the same decision serves three readers: the loader
that repacks layers, `compress inspect` that predicts kernels from a checkpoint's shapes without
loading it, and the eval report that records what was measured.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from compress.quantize.qlinear import QuantLinear
from compress.quantize.vocab import LOOKUP_KERNEL, QuantEmbedding


def runtime_dtype(device: torch.device | str) -> torch.dtype:
    """The activation dtype packed layers run fastest in on `device`.

    torch's int4 CPU kernel is fast with bfloat16 activations and slow with float32 (×0.07 of a
    float32 matmul), so packed models run in bfloat16 on every CPU; on CUDA, tinygemm needs
    bfloat16, and GPUs without it (before Ampere) run float16 on the exact path.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def prepare_runtime(model: nn.Module, dtype: torch.dtype) -> Counter[str]:
    """Repack every `QuantLinear` for its fastest kernel; returns how many layers run on each."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            counts[module.prepare(dtype).kernel] += 1
    return counts


def runtime_summary(model: nn.Module) -> dict:
    """What `eval.json` records of how a model ran: its compute dtype and layers per kernel."""
    counts: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            counts[module.plan.kernel] += 1
            if module.plan.note:
                notes[module.plan.note] += 1
        elif isinstance(module, QuantEmbedding):
            counts[LOOKUP_KERNEL] += 1
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    summary: dict = {"dtype": str(dtype).removeprefix("torch."), "kernels": dict(sorted(counts.items()))}
    if notes:
        summary["kernel_notes"] = dict(sorted(notes.items()))
    return summary
