"""bitsandbytes int8 (LLM.int8) and 4-bit NF4/FP4, through transformers' own `BitsAndBytesConfig`.

No calibration: transformers replaces every linear layer inside the model (not `lm_head`, not the
embeddings) with a bitsandbytes module while loading, and quantizes each weight as it arrives.
Saving and reloading are transformers' bnb serialization, so the artifact loads with a plain
`AutoModelForCausalLM.from_pretrained` wherever bitsandbytes runs; this module adds the CPU
workaround and the checks that make it safe here.

Two bitsandbytes 0.50.2 pitfalls on CPUs with AVX512-BF16 (see `disable_cpu_repack`): the 4-bit
fast path crashes on layers whose widths are not multiples of 32 (outputs) or 64 (inputs), and
once it has run, saving rewrites the weights. Unquantized modules keep the checkpoint's dtype, so
what an artifact measures is the linear layers' quantization alone.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.checkpoint import open_safetensors
from compress.errors import CompressError
from compress.modeling import ModelSource, check_loading_report, load_config, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig

BNB_METHODS = ("int8", "nf4", "fp4")
#: Artifact format names, for the manifest and the eval loader registry.
BNB_FORMAT = {"int8": "bnb-int8", "nf4": "bnb-4bit", "fp4": "bnb-4bit"}
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")

#: bnb stores a 4-bit weight as packed uint8 beside a JSON blob (as uint8) named like this, holding
#: the original shape; the weight's other side tensors (`absmax`, `quant_map`, `nested_*`) share
#: the weight's name as prefix.
_QUANT_STATE_KEY = ".quant_state.bitsandbytes__"
#: Side tensors of an int8 linear: per-row scales and the layout tag, beside an int8 `weight`.
_INT8_SIDE_SUFFIXES = (".SCB", ".weight_format")

#: bitsandbytes 0.50.2 log lines that say nothing actionable here: the int8 input-cast notice,
#: logged on every int8 matmul (dozens of lines per forward pass), and, on AVX512-BF16 CPUs, at
#: import, the optional `kernels` package for the CPU fast path `disable_cpu_repack` turns off.
_BNB_NOISE = {
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
}


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _quiet_bnb_logs() -> None:
    """Install the filters once, before bitsandbytes is imported (its import logs one of them)."""
    for name, prefix in _BNB_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


def bnb_config(
    method: str, double_quant: bool = False, compute_dtype: str = "bfloat16"
) -> BitsAndBytesConfig:
    """The transformers config for a method; `compute_dtype` is the 4-bit matmul dtype.

    LLM.int8 always computes in fp16 (bitsandbytes casts the inputs), so int8 takes neither option;
    double quantization (8-bit absmax) is a 4-bit-only feature.
    """
    from transformers import BitsAndBytesConfig

    if method not in BNB_METHODS:
        raise CompressError(f"unknown bitsandbytes method '{method}'; choose one of {', '.join(BNB_METHODS)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise CompressError(
            f"unknown compute dtype '{compute_dtype}'; choose one of {', '.join(COMPUTE_DTYPES)}"
        )
    if method == "int8":
        if double_quant:
            raise CompressError("double quantization applies to nf4 and fp4, not int8")
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(compute_dtype),
    )


def disable_cpu_repack(model: nn.Module) -> None:
    """Keep every bnb 4-bit linear on the generic dequantize + matmul path on CPU.

    bitsandbytes 0.50.2, `bitsandbytes/nn/modules.py`, `Linear4bit.__init__` sets the instance
    attribute `support_avx512bf16_for_cpu = has_avx512bf16()`. When it is True, the first CPU
    forward in eval mode without grad calls `functional._convert_weight_packed_for_cpu`, which
    (1) asserts `N % 32 == 0` (N = out_features: crashes on widths like 172 or 344) and reshapes
    `absmax` to [N, K // blocksize] (crashes when in_features K is not a multiple of 64), and
    (2) rewrites `weight` in place into a blocked layout, with `absmax` undone from double
    quantization, cast to bf16 and transposed. `Linear4bit._save_to_state_dict` inverts that only
    in part (without double quantization the transposed bf16 `absmax` is saved as is), so a model
    saved after a forward is not the one quantized. With the attribute False, `forward` never
    repacks and `matmul_4bit` takes `gemm_4bit` (dequantize to the compute dtype, then
    `F.linear`): any width, and the same numbers before and after a save. The attribute only
    gates the CPU branch; CUDA is unaffected.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _from_pretrained(source: ModelSource, what: str, **options) -> nn.Module:
    """`from_pretrained` from safetensors only, in eval mode, with the CPU workaround applied."""
    from transformers import AutoModelForCausalLM

    _quiet_bnb_logs()
    try:
        model, report = AutoModelForCausalLM.from_pretrained(
            source.path, use_safetensors=True, output_loading_info=True, **options
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompressError(f"cannot {what} '{source.reference}': {first_line}") from exc
    check_loading_report(source, report)
    disable_cpu_repack(model)
    return model.eval()


def load_bnb_quantized(
    source: ModelSource,
    method: str,
    double_quant: bool,
    compute_dtype: str,
    device: str,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load `source` quantized on the fly. Runs no forward pass, so the weights are as quantized."""
    quantization = bnb_config(method, double_quant, compute_dtype)
    config = load_config(source, trust_remote_code)
    return _from_pretrained(
        source,
        f"quantize ({method})",
        config=config,
        quantization_config=quantization,
        dtype="auto",
        device_map=str(resolve_device(device)),
        trust_remote_code=trust_remote_code,
    )


def _check_not_repacked(model: nn.Module) -> None:
    """Refuse a model whose 4-bit weights were repacked by the CPU fast path (see above)."""
    from bitsandbytes.nn import Linear4bit

    for name, module in model.named_modules():
        state = getattr(module.weight, "quant_state", None) if isinstance(module, Linear4bit) else None
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError(
                f"internal error: '{name}' was repacked for the CPU fast path by a forward pass; "
                "saving it would not write the quantized weights"
            )


def save_bnb(model: nn.Module, directory: Path) -> None:
    """transformers' bnb serialization, checked: safetensors only, `quantization_config` recorded."""
    _check_not_repacked(model)
    directory = Path(directory)
    model.save_pretrained(directory)
    pickles = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles or not any(directory.glob("*.safetensors")):
        raise RuntimeError(f"internal error: bnb save wrote {sorted(p.name for p in directory.iterdir())}")
    quantization = json.loads((directory / "config.json").read_text()).get("quantization_config") or {}
    if quantization.get("quant_method") != "bitsandbytes":
        raise RuntimeError("internal error: the saved config.json has no bitsandbytes quantization_config")


def load_bnb_for_eval(source: ModelSource, device: str, dtype: str) -> nn.Module:
    """Reload a saved bnb artifact for scoring on CPU or CUDA.

    `dtype` applies to the unquantized modules (embeddings, norms, `lm_head`); the quantized
    weights and their 4-bit compute dtype come from the checkpoint's `quantization_config`.
    """
    config = load_config(source)
    return _from_pretrained(
        source,
        "load the bitsandbytes artifact",
        config=config,
        dtype=resolve_dtype(dtype),
        device_map=str(resolve_device(device)),
    )


def _read_shapes(directory: Path) -> tuple[dict[str, list[int]], dict[str, str], dict[str, list[int]]]:
    """Every tensor's shape and dtype from the headers, and each 4-bit weight's original shape."""
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    packed: dict[str, list[int]] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open_safetensors(file) as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor_slice = handle.get_slice(name)
                shapes[name] = tensor_slice.get_shape()
                dtypes[name] = tensor_slice.get_dtype()
                if _QUANT_STATE_KEY in name:
                    blob = bytes(handle.get_tensor(name).to(torch.uint8).tolist())
                    packed[name.split(_QUANT_STATE_KEY)[0]] = json.loads(blob)["shape"]
    return shapes, dtypes, packed


def _is_side_tensor(name: str, dtypes: dict[str, str], packed: dict[str, list[int]]) -> bool:
    """Quantization metadata rather than weights: 4-bit quant state, int8 scales and layout tag."""
    owner = name.rpartition(".")[0]
    if owner in packed or _QUANT_STATE_KEY in name:
        return True
    return name.endswith(_INT8_SIDE_SUFFIXES) and dtypes.get(f"{owner}.weight") == "I8"


def bnb_parameter_count(directory: Path) -> int:
    """The original model's parameter count, read from a bnb checkpoint without loading it.

    The headers alone mislead: a 4-bit weight is stored as a [n/2, 1] uint8 tensor (two weights a
    byte) next to `absmax`, `quant_map` (and `nested_*` with double quantization) side tensors;
    its real shape is in the JSON quant state. An int8 weight keeps its shape, beside `SCB` scales
    and a `weight_format` scalar. Bits per weight is then 8 × tensor bytes / this count.
    """
    shapes, dtypes, packed = _read_shapes(directory)
    total = 0
    for name, shape in shapes.items():
        if name in packed:
            total += math.prod(packed[name])
        elif not _is_side_tensor(name, dtypes, packed):
            total += math.prod(shape)
    return total
