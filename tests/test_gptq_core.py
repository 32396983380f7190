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
    """The slab-wise, in-place float32 factorization gives what the direct sequence gives in float64:
    upper U with UᵀU = (H[order][:, order] + damping)⁻¹, and it consumes the statistics."""
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
    # Float32 rounding grows with the condition number (~500 here): measured within 4e-6 of the
    # largest entry, against float32's 6e-8 per operation.
    assert factor.dtype == torch.float32
    assert torch.allclose(factor, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(factor, factor.triu())
    assert gptq.hessian is None


def _layer_loss(weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer's output error on the inputs behind `hessian`: tr(ΔW H ΔWᵀ)."""
    difference = (dequantized - weight).double()
    return torch.einsum("oi,ij,oj->", difference, hessian.double(), difference).item()


@pytest.mark.parametrize(("bits", "group", "act_order"), [(4, 32, True), (4, 32, False), (3, -1, True)])
def test_gptq_beats_round_to_nearest_on_its_own_objective(bits, group, act_order):
    """On a random SPD Hessian with correlated inputs, GPTQ's output error is below RTN's at the same
    grid: the point of the method, checked on tiny tensors."""
    generator = torch.Generator().manual_seed(bits)
    inputs = torch.randn(512, 64, generator=generator) @ torch.randn(64, 64, generator=generator)
    weight = torch.randn(32, 64, generator=generator)
    gptq = GPTQ(64)
    gptq.add_batch(inputs)
    hessian = gptq.hessian.clone()
    ours, _ = gptq.quantize(weight, bits, group, sym=True, act_order=act_order)
    reference = rtn_quantize(weight, bits, group, sym=True)
    assert _layer_loss(weight, ours.dequantize(), hessian) < 0.8 * _layer_loss(
        weight, reference.dequantize(), hessian
    )


def test_a_singular_hessian_raises_the_damping_until_it_factorizes():
    """Duplicated inputs make H singular (and an all-zero input makes a dead column): the first
    damping that lets Cholesky succeed is recorded, and the dead column quantizes to zero."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(256, 8, generator=generator)
    inputs = torch.cat([base, base, torch.zeros(256, 1)], dim=1)  # rank 8 of 17
    gptq = GPTQ(17)
    gptq.add_batch(inputs)
    # So large that float32 rounding (~1e12 × 6e-8) swamps a damping of 1e-9 of the mean diagonal:
    # the factorization fails three times before 1e-6 lifts the zero eigenvalues.
    gptq.hessian[:16, :16] *= 1e12
    qw, stats = gptq.quantize(torch.randn(4, 17, generator=generator), 4, -1, sym=True, damp_percent=1e-9)
    assert stats["damp_percent"] > 1e-9
    assert torch.all(qw.dequantize()[:, 16] == 0)


def test_act_order_keeps_groups_contiguous_and_the_index_valid():
    """Act-order visits columns by decreasing Hessian diagonal, but static groups keep each column in
    its original group: g_idx is i // group_size, as every runtime kernel assumes."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 96, generator=generator) * torch.linspace(0.1, 3, 96)
    gptq = GPTQ(96)
    gptq.add_batch(inputs[:, torch.randperm(96, generator=generator)])
    qw, _ = gptq.quantize(torch.randn(8, 96, generator=generator), 4, 32, sym=False, act_order=True)
    assert torch.equal(qw.g_idx, torch.arange(96, dtype=torch.int32) // 32)
    assert qw.scales.shape == (8, 3) and qw.zeros.shape == (8, 3)
    assert int(qw.q.min()) >= 0 and int(qw.q.max()) < 16
