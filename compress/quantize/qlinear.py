"""Our own runtime for packed GPTQ/AWQ artifacts: a `QuantLinear` and the module swap that loads them.

transformers loads these checkpoints only through optimum + gptqmodel, whose kernels refuse some
shapes (widths that are not multiples of 16, group sizes like 86) and some machines. `QuantLinear`
loads the packed tensors exactly as stored; `prepare` then repacks them once for the fastest
kernel the device has (`kernels.py`) and releases them, or keeps them for the exact dequantize
path, so every artifact runs anywhere, CPU or GPU, and fast where a kernel takes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.quantizers_utils import should_convert_module

from compress.modeling import find_decoder_blocks, find_linear_layers
from compress.quantize.kernels import (
    EXACT_KERNEL,
    KernelPlan,
    LayerSpec,
    WeightOnlyKernel,
    build_kernel,
    keep_buffer_dtypes,
    plan_kernel,
)
from compress.quantize.packing import (
    PACKED_DTYPES,
    group_span,
    pack_awq,
    pack_gptq,
    packed_shapes,
    unpack_awq,
    unpack_gptq,
)
from compress.quantize.qweight import QuantizedWeight

_PACKERS = {"gptq": pack_gptq, "awq": pack_awq}


class QuantLinear(nn.Module):
    """y = x · Wᵀ + b with W [out, in] kept packed; buffers named and shaped as the checkpoint's.

    Until `prepare` picks a kernel, and on the exact path after it, the weight is dequantized on
    every call: nothing is cached by default (memory is the point); `cache_dequantized=True` keeps
    the last dequantized weight for speed.
    """

    def __init__(
        self,
        fmt: str,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        sym: bool,
        bias: bool = False,
        *,
        cache_dequantized: bool = False,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float16,
    ) -> None:
        """Zero-filled buffers of the right shapes, for `load_state_dict` to fill."""
        super().__init__()
        self.fmt = fmt
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.sym = sym
        self.cache_dequantized = cache_dequantized
        self._cached_weight: torch.Tensor | None = None
        self.kernel: WeightOnlyKernel | None = None
        self.plan = KernelPlan(EXACT_KERNEL, note="not repacked")
        for name, shape in packed_shapes(fmt, in_features, out_features, bits, group_size).items():
            self.register_buffer(name, torch.zeros(shape, dtype=PACKED_DTYPES[name], device=device))
        bias_buffer = torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None
        self.register_buffer("bias", bias_buffer)

    @classmethod
    def from_quantized(
        cls, qw: QuantizedWeight, bias: torch.Tensor | None, fmt: str, *, cache_dequantized: bool = False
    ) -> QuantLinear:
        """Pack `qw` in `fmt` ("gptq" or "awq"); `bias` is kept as given."""
        module = cls(
            fmt,
            qw.in_features,
            qw.out_features,
            qw.bits,
            qw.group_size,
            qw.sym,
            bias is not None,
            cache_dequantized=cache_dequantized,
            device="meta",  # placeholders only: the packed tensors replace them below
        )
        for name, tensor in _PACKERS[fmt](qw).items():
            setattr(module, name, tensor)
        module.bias = None if bias is None else bias.detach()
        return module

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The packed buffers (no bias), as a checkpoint stores them."""
        return {name: buffer for name, buffer in self.named_buffers(recurse=False) if name != "bias"}

    def layer_spec(self) -> LayerSpec:
        """Shape and grid, as the kernel planner reads them."""
        span = group_span(self.in_features, self.group_size)
        if self.fmt == "gptq":
            trivial = torch.arange(self.in_features, device=self.g_idx.device) // span
            contiguous = bool(torch.equal(self.g_idx.long(), trivial))
        else:
            contiguous = True  # AWQ GEMM has no g_idx: groups are contiguous by construction
        return LayerSpec(self.in_features, self.out_features, self.bits, span, contiguous)

    def prepare(self, dtype: torch.dtype) -> KernelPlan:
        """Repack for the fastest kernel that takes this layer for `dtype` activations on its
        device, releasing the checkpoint's packed tensors; layers no kernel takes keep them."""
        if self.kernel is not None:
            raise RuntimeError("this layer was already repacked for a kernel")
        device = self.scales.device
        plan = plan_kernel(self.layer_spec(), device.type, dtype)
        self.plan = plan
        if plan.fast:
            self.kernel = build_kernel(self.quantized_weight(), plan, dtype, device)
            for name in self.packed_tensors():
                setattr(self, name, None)
        return plan

    def quantized_weight(self) -> QuantizedWeight:
        """The exact integers, scales and groups behind this layer."""
        if self.kernel is not None:
            raise RuntimeError(
                f"the packed tensors were released when this layer was repacked for {self.kernel.name}"
            )
        if self.fmt == "gptq":
            return unpack_gptq(self.packed_tensors(), self.bits, self.group_size, self.sym)
        return unpack_awq(self.packed_tensors(), self.group_size, sym=self.sym)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The [out, in] weight in `dtype`, from the cache when enabled and still valid."""
        if not self.cache_dequantized:
            return self.quantized_weight().dequantize(dtype)
        cached = self._cached_weight
        if cached is None or cached.dtype != dtype or cached.device != self.scales.device:
            self._cached_weight = cached = self.quantized_weight().dequantize(dtype)
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.kernel is not None:
            y = self.kernel.forward(x)  # not __call__: no hooks on it, and it runs once per token
            return y if bias is None else y + bias
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _apply(self, fn, recurse: bool = True) -> QuantLinear:
        """Moves follow the model, dtype casts do not: `model.to(torch.bfloat16)` would round the
        fp16 scales, and the packed tensors must stay exactly what the checkpoint holds."""
        keep_buffer_dtypes(self, lambda: super(QuantLinear, self)._apply(fn, recurse))
        self._cached_weight = None
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached_weight = None  # new packed tensors make a cached weight stale
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"fmt={self.fmt}, in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, group_size={self.group_size}, sym={self.sym}, bias={self.bias is not None}, "
            f"kernel={self.plan.kernel}"
        )


def quantized_module_names(keys: Iterable[str]) -> set[str]:
    """The modules a checkpoint stores packed: those with a `<name>.qweight` tensor."""
    suffix = ".qweight"
    return {key[: -len(suffix)] for key in keys if key.endswith(suffix)}


def layer_format(quantization_config: dict) -> tuple[str, int, int, bool]:
    """(fmt, bits, group_size, sym) from config.json's `quantization_config`; only layouts we pack."""
    method = quantization_config.get("quant_method")
    if method == "gptq":
        layout = quantization_config.get("checkpoint_format") or quantization_config.get("format", "gptq")
        if layout != "gptq":
            raise ValueError(f"only GPTQ checkpoint_format 'gptq' (v1) is supported, not {layout!r}")
        sym = bool(quantization_config.get("sym", True))
    elif method == "awq":
        layout = quantization_config.get("version") or quantization_config.get("format", "gemm")
        if layout != "gemm":
            raise ValueError(f"only AWQ version 'gemm' is supported, not {layout!r}")
        sym = not quantization_config.get("zero_point", True)
    else:
        raise ValueError(f"quant_method must be 'gptq' or 'awq', not {method!r}")
    return method, int(quantization_config["bits"]), int(quantization_config["group_size"]), sym


def _default_quantized_names(model: nn.Module, modules_to_not_convert: list[str] | None) -> list[str]:
    """What the quantizers quantize: every linear inside the decoder blocks, less the exclusions."""
    blocks_path, blocks = find_decoder_blocks(model)
    names = [
        f"{blocks_path}.{index}.{layer.name}"
        for index, block in enumerate(blocks)
        for layer in find_linear_layers(block)
    ]
    return [name for name in names if should_convert_module(name, modules_to_not_convert)]


def _matrix_shape(name: str, module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear, or of a GPT-2 Conv1D (whose weight is stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        return in_features, out_features
    raise ValueError(
        f"{name} is a {type(module).__name__}, not a Linear or Conv1D; it cannot hold packed weights"
    )


def dynamic_override(name: str, quantization_config: dict, key: str, default: int) -> int:
    """A module's `key` (group_size, bits) under gptqmodel's `dynamic` per-module overrides
    (`"+:REGEX": {...}`).

    `compress` writes one override per layer whose width the requested group size does not divide
    (its largest divisor below the request is used there), so every layer keeps whole groups, and
    one for a quantized output head or embedding, which have their own bits.
    """
    for pattern, overrides in (quantization_config.get("dynamic") or {}).items():
        if pattern.startswith("-:"):
            continue
        if re.match(pattern.removeprefix("+:"), name) and key in overrides:
            return int(overrides[key])
    return default


def replace_with_quant_linears(
    model: nn.Module, quantization_config: dict, quantized_names: set[str] | None = None
) -> None:
    """Swap linears for empty `QuantLinear`s so `model.load_state_dict(checkpoint)` fills them.

    `quantized_names` (see `quantized_module_names`) names the packed modules exactly; without it,
    every linear in the decoder blocks not matched by `modules_to_not_convert` is swapped, and the
    embeddings and `lm_head` stay dense.
    """
    fmt, bits, group_size, sym = layer_format(quantization_config)
    if quantized_names is None:
        names = _default_quantized_names(model, quantization_config.get("modules_to_not_convert"))
    else:
        names = sorted(quantized_names)
    for name in names:
        layer_group_size = dynamic_override(name, quantization_config, "group_size", group_size)
        layer_bits = dynamic_override(name, quantization_config, "bits", bits)
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"the checkpoint packs {name}, which this model does not have") from exc
        in_features, out_features = _matrix_shape(name, module)
        has_bias = module.bias is not None
        try:
            replacement = QuantLinear(
                fmt,
                in_features,
                out_features,
                layer_bits,
                layer_group_size,
                sym,
                has_bias,
                device=module.weight.device,
                bias_dtype=module.bias.dtype if has_bias else torch.float16,
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        model.set_submodule(name, replacement)
