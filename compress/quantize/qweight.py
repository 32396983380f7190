"""The quantized form of one weight matrix, shared by every algorithm (RTN, GPTQ, AWQ) and format.

Algorithms produce a `QuantizedWeight`; packers turn it into a checkpoint layout (GPTQ, AWQ GEMM)
and unpackers give it back exactly. Keeping this one plain structure between them is what lets any
algorithm be written in any format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """W[o, i] ≈ (q[o, i] − zeros[o, g_idx[i]]) · scales[o, g_idx[i]], all integers in [0, 2^bits).

    Shapes: `q` [out, in] int32; `scales` [out, groups] float; `zeros` [out, groups] int32 (for
    symmetric quantization every zero is 2^(bits−1)); `g_idx` [in] int32, the group of each input
    channel (contiguous blocks of `group_size` unless act-order reordered them).
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int
    sym: bool

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [out, in] weight these integers stand for."""
        index = self.g_idx.long()
        scales = self.scales.to(torch.float32)[:, index]
        zeros = self.zeros.to(torch.float32)[:, index]
        return ((self.q.to(torch.float32) - zeros) * scales).to(dtype)

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.q.shape[1]

    def split_rows(self, sizes: list[int]) -> list[QuantizedWeight]:
        """Consecutive row blocks of `sizes` as separate weights (a stage quantized stacked, e.g.
        q, k and v, back into its layers); rows are independent, so nothing else changes."""
        parts = zip(self.q.split(sizes), self.scales.split(sizes), self.zeros.split(sizes), strict=True)
        return [
            QuantizedWeight(q, scales, zeros, self.g_idx.clone(), self.bits, self.group_size, self.sym)
            for q, scales, zeros in parts
        ]
