"""GPTQ (Frantar et al., 2022): quantize a layer column by column, pushing each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

Two plain steps, as in the paper's reference: `GPTQ.add_batch` accumulates H = 2/n Σ x xᵀ from the
layer's calibration inputs; `GPTQ.quantize` transforms the weights. Options: group size, symmetric
or asymmetric grid, act-order (columns by decreasing Hessian diagonal) with static groups (each
group's grid is fixed from the original weights up front, so groups stay contiguous and every kernel
can run the result), block-wise lazy updates, and damping that grows until Cholesky succeeds.
"""

from __future__ import annotations

import torch

from compress.errors import CompressError
from compress.quantize.qweight import QuantizedWeight
from compress.quantize.rtn import dequantize_grid, effective_group_size, grid_params, quantize_to_grid

LAZY_BLOCK = 128
MAX_DAMP_TRIES = 6
#: Rows of calibration inputs widened to float32 at a time when folded into the Hessian.
ADD_BATCH_ROWS = 512
#: Columns of R⁻¹ solved at a time (a slab of in × 128).
INVERSE_SLAB = 128


def _reversed_inverse(factor: torch.Tensor) -> torch.Tensor:
    """J·R⁻¹·J for a lower-triangular `factor` R (J reverses the order), in R's dtype.

    R⁻¹ is solved a slab of columns at a time against the whole of R (a sub-square of R would be
    copied for LAPACK), each slab landing flipped in the result: R⁻¹ exists only as the result.
    """
    size = factor.shape[0]
    result = torch.zeros_like(factor, memory_format=torch.contiguous_format)
    for start in range(0, size, INVERSE_SLAB):
        end = min(start + INVERSE_SLAB, size)
        slab = torch.zeros(size, end - start, dtype=factor.dtype, device=factor.device)
        slab[start:end].diagonal().fill_(1)
        torch.linalg.solve_triangular(factor, slab, upper=False, out=slab)
        result[:, size - end : size - start] = slab.flip(0, 1)
    return result


def lazy_block_width(group_size: int) -> int:
    """Columns updated together: about `LAZY_BLOCK`, and aligned with the groups either way.

    Groups of at most `LAZY_BLOCK` pack whole into a block; a wider group (up to a whole row, for
    per-channel grids) spans whole blocks of its largest divisor up to `LAZY_BLOCK`. Either way
    a group wider than a block starts one, where its grid is chosen. Tying the block to the group
    instead made a per-channel run one block as wide as the row, losing the lazy batching (×2.4–3.4
    the time on 576- and 1536-wide layers, same loss).
    """
    if group_size <= LAZY_BLOCK:
        return group_size * (LAZY_BLOCK // group_size)
    return max(d for d in range(1, LAZY_BLOCK + 1) if group_size % d == 0)


class GPTQ:
    """One layer's Hessian statistics and its GPTQ transformation."""

    def __init__(self, in_features: int) -> None:
        # float32 accumulation and factorization, as the reference implementation.
        self.hessian: torch.Tensor | None = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.samples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Fold a batch of inputs [tokens, in_features] into the running mean of 2·x·xᵀ.

        In place and a slice of rows at a time: a batch of down-projection inputs in float32 is
        larger than the Hessian itself, and `x.T @ x` would be another Hessian-sized temporary.
        """
        count = inputs.shape[0]
        self.hessian *= self.samples / (self.samples + count)
        self.samples += count
        for rows in inputs.split(ADD_BATCH_ROWS):
            x = rows.to(torch.float32)
            self.hessian.addmm_(x.T, x, alpha=2 / self.samples)

    def _inverse_cholesky(self, order: torch.Tensor, damp_percent: float) -> tuple[torch.Tensor, float]:
        """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) for the columns in `order`, in float32, and the
        damping used, raised ×10 each time the factorization fails. Consumes the statistics.

        With J the order-reversing permutation and J·H·J = R·Rᵀ (R lower), U = J·R⁻¹·J: one
        factorization and one triangular solve, instead of factorizing H, inverting it and
        factorizing the inverse (a third less time and memory). Float32 throughout, as the
        reference implementation and gptqmodel: a float64 factor of a wide layer (19 MB for an
        MLP down projection 1536 wide) was the largest allocation of a streamed run and fragmented
        the heap beyond its own size, for no measurable gain in quality (docs/decisions.md). At
        most two in×in matrices exist at once: the permuted Hessian and the factor while it
        factorizes (the permuted copy is what a retry with more damping starts from), then the
        factor and the result, R⁻¹ solved a slab of columns at a time straight into the result.
        """
        reverse = order.flip(0)
        reversed_hessian = self.hessian[reverse[:, None], reverse]
        self.hessian = None
        mean_diagonal = torch.mean(reversed_hessian.diagonal().to(torch.float64)).item()
        damp = damp_percent
        for _ in range(MAX_DAMP_TRIES):
            # Symmetric, so its transpose is itself, laid out column-major: LAPACK factorizes that
            # in place, where a row-major matrix would first be copied.
            factor = reversed_hessian.mT.clone(memory_format=torch.preserve_format)
            factor.diagonal().add_(damp * mean_diagonal)
            _, info = torch.linalg.cholesky_ex(factor, out=(factor, torch.empty((), dtype=torch.int32)))
            if info.item() == 0:
                del reversed_hessian
                return _reversed_inverse(factor), damp
            del factor
            damp *= 10
        raise CompressError("GPTQ could not factorize a layer's Hessian even with heavy damping")

    def quantize(
        self,
        weight: torch.Tensor,
        bits: int,
        group_size: int,
        sym: bool,
        act_order: bool = True,
        damp_percent: float = 0.01,
    ) -> tuple[QuantizedWeight, dict[str, float]]:
        """Quantize `weight` [out, in]; returns the integers and statistics (error, damping used)."""
        owned = weight.detach().clone()
        qw, losses, damp = self._sweep(owned, bits, group_size, sym, act_order, damp_percent)
        return qw, {"gptq_loss": losses.sum().item(), "damp_percent": damp, "samples": self.samples}

    def quantize_stacked(
        self,
        weights: list[torch.Tensor],
        bits: int,
        group_size: int,
        sym: bool,
        act_order: bool = True,
        damp_percent: float = 0.01,
    ) -> list[tuple[QuantizedWeight, dict[str, float]]]:
        """Quantize layers that read the same input (q, k, v; gate, up) as one matrix.

        GPTQ treats rows independently given the Hessian, which these layers share: stacking their
        rows gives each layer the result it would get alone, for one factorization and one column
        sweep instead of one per layer (the sweep's cost is per column, far more than per row).
        """
        sizes = [weight.shape[0] for weight in weights]
        qw, losses, damp = self._sweep(torch.cat(weights), bits, group_size, sym, act_order, damp_percent)
        return [
            (part, {"gptq_loss": loss.sum().item(), "damp_percent": damp, "samples": self.samples})
            for part, loss in zip(qw.split_rows(sizes), losses.split(sizes), strict=True)
        ]

    def _sweep(
        self,
        weight: torch.Tensor,
        bits: int,
        group_size: int,
        sym: bool,
        act_order: bool,
        damp_percent: float,
    ) -> tuple[QuantizedWeight, torch.Tensor, float]:
        """The GPTQ column sweep; returns the integers, each row's loss, and the damping used.

        `weight` is the caller's to give away (a copy or a stack): it is overwritten, not copied again.
        """
        w = weight.to(torch.float32)
        columns = w.shape[1]
        size = effective_group_size(columns, group_size)
        dead = torch.diag(self.hessian) == 0
        self.hessian[dead, dead] = 1
        w[:, dead] = 0

        static_scales, static_zeros = self._static_grid(w, size, bits, sym)
        importance = torch.diag(self.hessian)
        order = torch.argsort(importance, descending=True) if act_order else torch.arange(columns)
        w = w[:, order]
        h_inv, damp = self._inverse_cholesky(order, damp_percent)

        q = torch.zeros(w.shape, dtype=torch.int32)
        losses = torch.zeros(w.shape[0])
        block = lazy_block_width(size)
        group_of = order // size  # static groups follow the original column's position
        dynamic_scales, dynamic_zeros = static_scales.clone(), static_zeros.clone()
        scale = zero = None
        for start in range(0, columns, block):
            end = min(start + block, columns)
            w_block, h_block = w[:, start:end].clone(), h_inv[start:end, start:end]
            errors = torch.zeros_like(w_block)
            for i in range(end - start):
                column = start + i
                if act_order:
                    group = group_of[column]
                    scale, zero = static_scales[:, group], static_zeros[:, group]
                elif column % size == 0:  # the grid is chosen from the error-updated weights
                    # A group wider than the block starts one, where `w` holds every update so far.
                    span = w_block[:, i : i + size] if size <= block else w[:, column : column + size]
                    scale, zero = grid_params(span, bits, sym)
                    dynamic_scales[:, column // size], dynamic_zeros[:, column // size] = scale, zero
                wcol = w_block[:, i : i + 1]
                qcol = quantize_to_grid(wcol, scale, zero, bits)
                dq = dequantize_grid(qcol, scale, zero)
                q[:, column] = qcol[:, 0]
                diagonal = h_block[i, i]
                error = (wcol - dq)[:, 0] / diagonal
                w_block[:, i:].addr_(error, h_block[i, i:], alpha=-1)
                errors[:, i] = error
            w[:, end:].addmm_(errors, h_inv[start:end, end:], alpha=-1)
            losses += (errors**2).sum(dim=1) / 2  # (w − q)² / [H⁻¹]ᵢᵢ², the paper's per-column loss

        inverse_order = torch.argsort(order)
        q = q[:, inverse_order]
        scales, zeros = (static_scales, static_zeros) if act_order else (dynamic_scales, dynamic_zeros)
        result = QuantizedWeight(
            q=q.to(torch.int32),
            scales=scales.float(),
            zeros=zeros.to(torch.int32),
            g_idx=(torch.arange(columns) // size).to(torch.int32),
            bits=bits,
            group_size=size,
            sym=sym,
        )
        return result, losses, damp

    @staticmethod
    def _static_grid(w: torch.Tensor, size: int, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group grids [out, groups] from the unquantized weights (act-order's static groups)."""
        grids = [grid_params(w[:, g * size : (g + 1) * size], bits, sym) for g in range(w.shape[1] // size)]
        return torch.stack([s for s, _ in grids], dim=1), torch.stack([z for _, z in grids], dim=1)
