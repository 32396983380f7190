"""Weight-only matmul kernels for packed layers: which one a layer can run on, and the repacked
operands each one needs.

The checkpoint layouts (GPTQ, AWQ GEMM) are interchange formats, not compute formats: unpacking
and dequantizing them on every call costs 30-50× a dense matmul. torch ships the kernels that make
a packed model *faster* than its float source, each wanting its own weight layout, built once at
load:

- `int4pack-cpu` / `int4pack-cuda`: `aten._weight_int4pack_mm[_for_cpu]` (tinygemm on CUDA). It
  computes w = (q − 8)·scale + zero′ per group of 32/64/128/256 input channels, so any grid of at
  most 4 bits embeds exactly: zero′ = (8 − z)·scale for the stored integer zero point z. A group
  size that is a multiple of a kernel group runs with its scales repeated; a smaller odd group
  (86 for a width of 172) is zero-padded to the next kernel group (input and weight alike, so the
  padding contributes exactly 0), as long as that at most doubles the weight; output widths are
  padded to the kernel's multiple of 16 and sliced back.
- `int8pack`: `aten._weight_int8pack_mm` (CPU), one scale per output channel. A ≤ 8-bit grid
  with one group per row stores q − 128 as int8; a zero point other than 128 adds the exact
  rank-one term (128 − z)·scale·Σx.
- `dequantize`: everything else (act-order `g_idx`, grouped 5–8-bit) takes the exact path, which
  rebuilds the float weight from the integers; so does every layer of a model scored in float32.

The fast kernels compute in the activation dtype (bfloat16 on CPU, as the int4 kernel is slow in
float32), so scales and zero′ are rounded to it: the same rounding a dense bfloat16 model applies
to its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compress.quantize.packing import group_span
from compress.quantize.qweight import QuantizedWeight

#: Group sizes the int4 kernels take, largest first.
INT4_KERNEL_GROUPS = (256, 128, 64, 32)
#: Padding a group to the next kernel group is worth it up to this growth of the weight.
MAX_GROUP_PADDING = 2.0
#: The int4 kernels tile output channels by 16 (CPU) and 8 (CUDA); int8pack reads inputs by 16. On
#: the CPU outputs are padded to 64, where its packed layout is uniform (see `_unpack_cpu_int4`).
OUTPUT_MULTIPLE = {"int4pack-cpu": 64, "int4pack-cuda": 16}
#: From this many activation rows on (prefill, not decode), the weight-only kernels are slower than
#: dequantizing the weight for the call and running the dense bfloat16 matmul (AMX/AVX512-BF16).
DENSE_ROWS = 128
INT8_INPUT_MULTIPLE = 16
INT4_ZERO = 8  # the int4 kernels' fixed offset: w = (q − 8)·scale + zero′
INT8_ZERO = 128  # int8pack's integers are signed: q − 128

FAST_KERNELS = ("int4pack-cpu", "int4pack-cuda", "int8pack")
aten = torch.ops.aten
EXACT_KERNEL = "dequantize"


@dataclass(frozen=True)
class LayerSpec:
    """What decides a packed layer's kernel: its shape and grid, not its values."""

    in_features: int
    out_features: int
    bits: int
    group_size: int  # the effective span of one group (the whole row for per-channel)
    contiguous_groups: bool  # g_idx is the identity grouping (no act-order permutation)


@dataclass(frozen=True)
class KernelPlan:
    """The kernel one layer runs on; `note` says why a layer takes the exact path, or how it is padded."""

    kernel: str
    kernel_group: int | None = None  # int4: the kernel's group size
    padded_group: int | None = None  # int4: each stored group padded to this many input channels
    note: str = ""

    @property
    def fast(self) -> bool:
        return self.kernel in FAST_KERNELS


def _int4_groups(group_size: int) -> tuple[int, int] | None:
    """(kernel group, padded group) for a stored group span, or None when no kernel group fits."""
    for kernel_group in INT4_KERNEL_GROUPS:
        if group_size % kernel_group == 0:
            return kernel_group, group_size
    for kernel_group in reversed(INT4_KERNEL_GROUPS):
        if kernel_group > group_size and kernel_group <= MAX_GROUP_PADDING * group_size:
            return kernel_group, kernel_group
    return None


def plan_kernel(spec: LayerSpec, device_type: str, dtype: torch.dtype) -> KernelPlan:
    """The fastest kernel `spec` can run on for activations of `dtype` on `device_type`.

    The CPU kernels also take float32 activations, computing the exact weights (to 1e-5), but the
    int4 one is then slower than the exact path with a cached weight: float32 is for tests.
    """
    if not spec.contiguous_groups:
        return KernelPlan(EXACT_KERNEL, note="act-order g_idx")
    if spec.bits <= 4:
        if device_type == "cuda" and dtype != torch.bfloat16:
            return KernelPlan(EXACT_KERNEL, note="int4 on CUDA needs bfloat16 activations")
        if device_type not in ("cpu", "cuda"):
            return KernelPlan(EXACT_KERNEL, note=f"no int4 kernel on {device_type}")
        groups = _int4_groups(spec.group_size)
        if groups is None:
            return KernelPlan(EXACT_KERNEL, note=f"group size {spec.group_size}")
        kernel_group, padded_group = groups
        note = (
            f"groups of {spec.group_size} padded to {padded_group}" if padded_group != spec.group_size else ""
        )
        return KernelPlan(f"int4pack-{device_type}", kernel_group, padded_group, note)
    if spec.bits <= 8 and spec.group_size == spec.in_features and device_type == "cpu":
        return KernelPlan("int8pack")
    return KernelPlan(EXACT_KERNEL, note=f"{spec.bits}-bit groups of {spec.group_size}")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_groups(tensor: torch.Tensor, group: int, padded: int, value: float) -> torch.Tensor:
    """[..., groups·group] → [..., groups·padded], each group's tail filled with `value`."""
    if padded == group:
        return tensor
    *lead, width = tensor.shape
    grouped = tensor.reshape(*lead, width // group, group)
    return F.pad(grouped, (0, padded - group), value=value).reshape(*lead, -1)


def keep_buffer_dtypes(module: nn.Module, apply) -> None:
    """Run `apply` (an `nn.Module._apply` step) but keep every own buffer's dtype: a model-wide
    `.to(dtype)` must move a kernel's operands or a checkpoint's scales, never re-round them."""
    originals = dict(module.named_buffers(recurse=False))
    apply()
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None and buffer.dtype != originals[name].dtype:
            setattr(module, name, originals[name].to(buffer.device))


class WeightOnlyKernel(nn.Module):
    """y = x · Wᵀ (no bias) for x [..., in_features], computed in `dtype`, returned in x's dtype.

    Operands are non-persistent buffers: they follow device moves and count as resident weight
    memory, but are built from the checkpoint's packed tensors at load and never saved.
    """

    name: str

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, in_features] in `dtype` → [rows, ≥ out_features] (padded columns are sliced off)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Called once per layer per decoded token: every branch here is worth skipping when idle.
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if not flat.is_contiguous():  # the head at prefill reads one position of each row
            flat = flat.contiguous()
        if flat.dtype != self.dtype:
            flat = flat.to(self.dtype)
        y = self.compute(flat)
        if y.shape[1] != self.out_features:
            y = y[:, : self.out_features]
        y = y.reshape(*lead, self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _apply(self, fn, recurse: bool = True) -> WeightOnlyKernel:
        keep_buffer_dtypes(self, lambda: super(WeightOnlyKernel, self)._apply(fn, recurse))
        return self

    def extra_repr(self) -> str:
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{self.name}, {shape}, dtype={self.dtype}"


class Int4PackKernel(WeightOnlyKernel):
    """torch's int4 weight-only kernel (CPU, or tinygemm on CUDA) for any grid of at most 4 bits."""

    def __init__(
        self, qw: QuantizedWeight, plan: KernelPlan, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__(qw.in_features, qw.out_features, dtype)
        self.name = plan.kernel
        self.group = group_span(qw.in_features, qw.group_size)
        self.padded_group = plan.padded_group
        self.kernel_group = plan.kernel_group
        rows = _round_up(qw.out_features, OUTPUT_MULTIPLE[self.name]) - qw.out_features
        q = _pad_groups(qw.q.to(torch.int32), self.group, self.padded_group, INT4_ZERO)
        q = F.pad(q, (0, 0, 0, rows), value=INT4_ZERO)
        scales = qw.scales.to(torch.float32)
        zeros = (INT4_ZERO - qw.zeros.to(torch.float32)) * scales
        operands = torch.stack([scales, zeros], dim=-1)  # [out, groups, 2]
        operands = operands.repeat_interleave(self.padded_group // self.kernel_group, dim=1)
        operands = F.pad(operands, (0, 0, 0, 0, 0, rows))  # padded rows: scale 0, zero′ 0
        self.register_buffer(
            "scales_and_zeros", operands.transpose(0, 1).contiguous().to(device, dtype), False
        )
        self.register_buffer("weight", self._pack(q.to(device)), False)
        cpu = self.name == "int4pack-cpu"
        self._matmul = (aten._weight_int4pack_mm_for_cpu if cpu else aten._weight_int4pack_mm).default
        # The CPU layout is torch's internal detail: the dense prefill path is used only where
        # decoding it gives back exactly the integers that were packed.
        self.dense_rows = DENSE_ROWS if cpu and torch.equal(_unpack_cpu_int4(self.weight), q) else None

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        if self.name == "int4pack-cpu":
            return aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # tinygemm: even column high nibble
        k_tiles = q.shape[1] // 16
        inner = next(tiles for tiles in (8, 4, 2) if k_tiles % tiles == 0)
        return aten._convert_weight_to_int4pack(nibbles.contiguous(), inner)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.padded_group != self.group:
            x = _pad_groups(x, self.group, self.padded_group, 0.0)
        if self.dense_rows is not None and x.shape[0] >= self.dense_rows:
            return self._dense(x)
        return self._matmul(x, self.weight, self.kernel_group, self.scales_and_zeros)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """x · Wᵀ through the dense bfloat16 matmul (AMX), dequantizing W for this call only.

        The weight is rebuilt in the CPU layout's own order, [out/64][in][64] (see
        `_unpack_cpu_int4`), and multiplied block by block, which saves transposing it: q − 8 is
        exact in `dtype`, then ·scale and + zero′ in place each round once.
        """
        rows, columns = self.weight.shape[0], x.shape[1]
        blocks, groups = rows // 64, columns // self.kernel_group
        weight = _cpu_int4_blocks(self.weight).to(self.dtype).sub_(INT4_ZERO)
        operands = self.scales_and_zeros.view(groups, blocks, 1, 64, 2).transpose(0, 1)  # [b, g, 1, 64, 2]
        scales, zeros = operands[..., 0].contiguous(), operands[..., 1].contiguous()
        weight.view(blocks, groups, self.kernel_group, 64).mul_(scales).add_(zeros)
        return torch.matmul(x, weight).transpose(0, 1).reshape(x.shape[0], rows)


class Int8PackKernel(WeightOnlyKernel):
    """torch's int8 weight-only kernel for a per-channel grid of at most 8 bits."""

    name = "int8pack"

    def __init__(self, qw: QuantizedWeight, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(qw.in_features, qw.out_features, dtype)
        self.input_padding = _round_up(qw.in_features, INT8_INPUT_MULTIPLE) - qw.in_features
        weight = F.pad((qw.q - INT8_ZERO).to(torch.int8), (0, self.input_padding))
        scales = qw.scales[:, 0].to(torch.float32)
        self.register_buffer("weight", weight.contiguous().to(device), False)
        self.register_buffer("scales", scales.to(device, dtype), False)
        offset = (INT8_ZERO - qw.zeros[:, 0].to(torch.float32)) * scales
        self.register_buffer("offset", offset.to(device) if offset.any() else None, False)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, self.input_padding)) if self.input_padding else x
        if x.shape[0] >= DENSE_ROWS:
            y = F.linear(padded, self.weight.to(self.dtype) * self.scales.unsqueeze(1))
        else:
            y = aten._weight_int8pack_mm.default(padded, self.weight, self.scales)
        if self.offset is None:
            return y
        return (y.float() + x.float().sum(dim=-1, keepdim=True) * self.offset).to(y.dtype)


def _cpu_int4_blocks(packed: torch.Tensor) -> torch.Tensor:
    """The integers of `_convert_weight_to_int4pack_for_cpu`'s uint8 layout in its own block order,
    [out/64, in, 64] (torch 2.13, `out` a multiple of 64): bytes run [out/64][in][32], byte j of a
    run holding output row j in its low nibble and row 32 + j in its high nibble."""
    runs = packed.view(packed.shape[0] // 64, -1, 32)
    return torch.cat([runs & 0x0F, runs >> 4], dim=2)


def _unpack_cpu_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, in] int32 from the CPU layout (see `_cpu_int4_blocks`)."""
    return _cpu_int4_blocks(packed).transpose(1, 2).reshape(packed.shape[0], -1).to(torch.int32)


def build_kernel(
    qw: QuantizedWeight, plan: KernelPlan, dtype: torch.dtype, device: torch.device
) -> WeightOnlyKernel:
    """The repacked operands for a fast `plan` (see `plan_kernel`)."""
    if plan.kernel.startswith("int4pack"):
        return Int4PackKernel(qw, plan, dtype, device)
    if plan.kernel == "int8pack":
        return Int8PackKernel(qw, dtype, device)
    raise ValueError(f"{plan.kernel} is not a fast kernel")
