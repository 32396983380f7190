"""Round-to-nearest on a uniform integer grid per group: the quantization grid every method shares.

GPTQ and AWQ choose *which* integers to store; the grid (scale and zero point per output channel and
group, from the group's range) is this module's. Scales are rounded to fp16 before use, because the
checkpoint formats store them in fp16: the integers then dequantize exactly to what was evaluated.
"""

from __future__ import annotations

import torch

from compress.quantize.qweight import QuantizedWeight


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` [rows, columns] from its range (zero included)."""
    maxq = 2**bits - 1
    low = torch.clamp(w.min(dim=1).values, max=0)
    high = torch.clamp(w.max(dim=1).values, min=0)
    if sym:
        high = torch.maximum(low.abs(), high)
        low = -high
    empty = (high - low) == 0
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = ((high - low) / maxq).half().float()
    if sym:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.clamp(torch.round(-low / scale), 0, maxq)
    return scale, zero


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in [0, 2^bits) for `w` [rows, columns] with per-row `scale`, `zero` [rows]."""
    q = torch.round(w / scale.unsqueeze(1)) + zero.unsqueeze(1)
    return torch.clamp(q, 0, 2**bits - 1)


def dequantize_grid(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero.unsqueeze(1)) * scale.unsqueeze(1)


#: Group sizes the fast int4 kernels take (see `kernels.py`), largest first.
KERNEL_GROUP_SIZES = (256, 128, 64, 32)


def effective_group_size(in_features: int, group_size: int) -> int:
    """The group span a layer of `in_features` inputs gets when `group_size` is asked for.

    `group_size` itself where it divides the width; else the largest kernel group size below it
    that does (576 → 64 for 128, which the int4 kernels run as is); only then the largest divisor
    below it (688 → 86, which the kernels run padded to 128). -1 means one group per row.
    """
    if group_size == -1 or group_size >= in_features:
        return in_features
    if in_features % group_size == 0:
        return group_size
    for size in KERNEL_GROUP_SIZES:
        if size < group_size and in_features % size == 0:
            return size
    return max(d for d in range(1, group_size + 1) if in_features % d == 0)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """Round every weight [out, in] to its group's grid: the baseline every other method must beat.

    Every (row, group) is one row of a [out·groups, size] view, so all grids come from one call
    (a loop over groups cost AWQ's searches, which round hundreds of candidates, most of their time).
    """
    w = weight.float()
    out_features, in_features = w.shape
    size = effective_group_size(in_features, group_size)
    groups = in_features // size
    rows = w.reshape(out_features * groups, size)
    scale, zero = grid_params(rows, bits, sym)
    q = quantize_to_grid(rows, scale, zero, bits)
    return QuantizedWeight(
        q=q.reshape(out_features, in_features).to(torch.int32),
        scales=scale.reshape(out_features, groups),
        zeros=zero.reshape(out_features, groups).to(torch.int32),
        g_idx=(torch.arange(in_features) // size).to(torch.int32),
        bits=bits,
        group_size=size,
        sym=sym,
    )
