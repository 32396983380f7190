"""Our grids as GGML blocks: decoded by the `gguf` package's own dequantizer (independent of our
code), a Q4_0/Q8_0 export is exactly the weight our quantizers produced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from compress.export.blocks import exact_type, ggml_blocks
from compress.quantize.gptq import GPTQ
from compress.quantize.rtn import rtn_quantize


def _weight(rows: int = 24, columns: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, columns, generator=generator) * torch.rand(1, columns, generator=generator)


def _decoded(blocks: np.ndarray, kind: str) -> torch.Tensor:
    return torch.from_numpy(dequantize(blocks, GGMLQuantizationType[kind]).copy())


@pytest.mark.parametrize(("bits", "kind"), [(4, "Q4_0"), (8, "Q8_0")])
def test_rtn_grid_is_exactly_the_ggml_block(bits, kind):
    weight = rtn_quantize(_weight(), bits, 32, sym=True)
    assert exact_type(weight) == kind
    decoded = _decoded(ggml_blocks(weight), kind)
    assert torch.equal(decoded, weight.dequantize())


def test_gptq_with_act_order_exports_without_rounding_again():
    """Act-order's static groups keep `g_idx = i // 32`, so GPTQ's integers go over unchanged."""
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(1)) @ torch.randn(128, 128)
    gptq = GPTQ(128)
    gptq.add_batch(x)
    weight, _ = gptq.quantize(_weight(), 4, 32, sym=True, act_order=True)
    assert torch.equal(_decoded(ggml_blocks(weight), "Q4_0"), weight.dequantize())


@pytest.mark.parametrize(
    ("bits", "group", "sym"), [(4, 64, True), (4, 32, False), (3, 32, True), (4, -1, True)]
)
def test_other_grids_are_refused(bits, group, sym):
    weight = rtn_quantize(_weight(), bits, group, sym=sym)
    assert exact_type(weight) is None
    with pytest.raises(ValueError, match="not exactly Q4_0 or Q8_0"):
        ggml_blocks(weight)
