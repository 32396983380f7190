"""GPTQ's core on tiny tensors, and the group sizes the defaults pick (fast: no model)."""

from __future__ import annotations

import pytest
import torch

from compress.quantize.gptq import GPTQ, lazy_block_width
from compress.quantize.rtn import effective_group_size, rtn_quantize


@pytest.mark.parametrize(
    ("width", "request_", "chosen"),
    [
        (1536, 128, 128),
        (576, 128, 64),
        (192, 128, 64),
        (96, 128, 96),
        (688, 128, 86),
        (172, 128, 86),
        (576, -1, 576),
    ],
)
def test_default_group_sizes_prefer_what_the_kernels_take(width, request_, chosen):
    """128 where it divides the width, else the largest of 64/32 that does, only then an odd divisor."""
    assert effective_group_size(width, request_) == chosen


@pytest.mark.parametrize(
    ("group", "block"), [(32, 128), (86, 86), (128, 128), (576, 96), (1536, 128), (172, 86)]
)
def test_lazy_blocks_align_with_groups(group, block):
    assert lazy_block_width(group) == block
    assert (group % block == 0) or (block % group == 0)


@pytest.mark.parametrize(("bits", "group"), [(4, 64), (8, -1), (4, -1), (3, 96)])
def test_gptq_with_an_identity_hessian_is_round_to_nearest(bits, group):
    """With H = I no error propagates between columns, so GPTQ must reduce to RTN exactly, whatever
    the block width (per-channel groups now span several lazy blocks)."""
    weight = torch.randn(48, 576, generator=torch.Generator().manual_seed(0))
    gptq = GPTQ(576)
    gptq.hessian = torch.eye(576)
    ours, _ = gptq.quantize(weight, bits, group, sym=True, act_order=False, damp_percent=1e-6)
    reference = rtn_quantize(weight, bits, group, sym=True)
    assert torch.equal(ours.q, reference.q)
    torch.testing.assert_close(ours.scales, reference.scales)


@pytest.mark.parametrize("width", [64, 172, 300])
def test_inverse_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(width):
    """The slab-wise, in-place factorization gives what the direct sequence gives: upper U
    with UᵀU = (H[order][:, order] + damping)⁻¹, and it consumes the statistics."""
    torch.manual_seed(width)
    inputs = torch.randn(4 * width, width) @ torch.randn(width, width)
    gptq = GPTQ(width)
    for rows in inputs.split(width):
        gptq.add_batch(rows)
    hessian = gptq.hessian.clone()
    assert torch.allclose(hessian, 2 * inputs.T @ inputs / inputs.shape[0], rtol=1e-4, atol=1e-3)
    order = torch.argsort(torch.diag(hessian), descending=True)
    factor, damp = gptq._inverse_cholesky(order, 0.01)
    permuted = hessian[order][:, order].double()
    permuted.diagonal().add_(damp * permuted.diagonal().mean())
    lower = torch.linalg.cholesky(permuted.flip(0, 1))
    identity = torch.eye(width, dtype=torch.float64)
    expected = torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1).float()
    # Equal to the last bit on one thread; BLAS may block the two solves differently on several.
    assert torch.allclose(factor, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert torch.equal(factor, factor.triu())
    assert gptq.hessian is None
