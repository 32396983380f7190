"""A transformers Llama (dense or one of our packed artifacts) as a GGUF file llama.cpp loads.

The tensors are written in one of two ways. Weights our quantizers put on a grid that a GGML block
type holds exactly (`blocks.exact_type`) are written as those blocks, byte for byte, so llama.cpp
runs the very integers GPTQ/AWQ/RTN chose. Everything else is written as floats (F32 unless an
F16/BF16 file was asked for); a quantized target type is then reached by llama.cpp's own quantizer
(`llamacpp.quantize_file`), which keeps tensors already of the target type and applies llama.cpp's
per-tensor policy to the rest, exactly as `llama-quantize` would.

Two layout facts of llama.cpp's `llama` architecture: q and k rows are interleaved per rotary pair
(Meta's layout) where transformers splits each head into halves, so their rows are permuted here;
and a model with tied embeddings has no `output.weight` (llama.cpp reuses `token_embd`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError
from compress.export.blocks import BLOCK, ggml_blocks
from compress.export.vocab import GGUFVocab

#: Architectures llama.cpp runs as `llama` whose tensors this writer knows.
SUPPORTED_MODEL_TYPES = ("llama",)
_NUMPY_FLOATS = {"F32": np.float32, "F16": np.float16}
#: transformers' names for the activation llama.cpp's `llama` architecture hard-codes.
SILU_NAMES = ("silu", "swish")
#: Where the manifest travels inside the file, so a copied .gguf still says how it was made.
MANIFEST_KEY = "compress.manifest"


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor goes into the file: its GGUF name and GGML type."""

    hf_name: str
    gguf_name: str
    ggml_type: str  # "F32", "F16", "BF16", "Q4_0" or "Q8_0"
    exact: bool  # written as our own grid's blocks


def check_architecture(config: Any) -> None:
    """Refuse, in one line, a model llama.cpp's `llama` architecture would not run as transformers does."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise CompressError(f"GGUF export supports the {supported} architecture, not '{model_type}'")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise CompressError(f"GGUF export supports plain RoPE; this model uses '{rope['rope_type']}' scaling")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise CompressError("GGUF export supports Llama without attention or MLP biases")
    activation = getattr(config, "hidden_act", "silu")
    if activation not in SILU_NAMES:  # llama.cpp's `llama` MLP is SiLU-gated, whatever the file says
        raise CompressError(
            f"GGUF export supports Llama with a SiLU MLP (llama.cpp runs SiLU); this one uses '{activation}'"
        )


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def gguf_names(config: Any) -> Callable[[str], str]:
    """The GGUF tensor name of each state-dict name of this model (one-line error for an unknown one)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    def name_of(hf_name: str) -> str:
        found = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise CompressError(f"GGUF export does not know where the tensor '{hf_name}' goes")
        return found

    return name_of


def _write_metadata(writer: Any, config: Any, name: str, file_type: int) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id"}
    setters["pad"] = "add_pad_token_id"
    for role, token_id in vocab.special_ids.items():
        getattr(writer, setters[role])(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)


def _rotary_rows(tensor: np.ndarray, heads: int) -> np.ndarray:
    """transformers' q/k rows (each head: first halves, then second halves of its rotary pairs) in
    llama.cpp's order (pairs interleaved). Rows move whole, so GGML blocks permute the same way."""
    paired = tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, *tensor.shape[1:])
    return paired.swapaxes(1, 2).reshape(tensor.shape)


def _rotary_heads(hf_name: str, config: Any) -> int | None:
    if hf_name.endswith("self_attn.q_proj.weight"):
        return config.num_attention_heads
    if hf_name.endswith("self_attn.k_proj.weight"):
        return config.num_key_value_heads
    return None


def _weights(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """(state-dict name, dense tensor or QuantizedWeight) for every tensor the GGUF needs."""
    from compress.quantize.qlinear import QuantLinear

    packed = {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        module_name, _, tensor_name = name.rpartition(".")
        if module_name in packed:
            if tensor_name == "qweight":  # once per layer; its other buffers are in the same weight
                yield f"{module_name}.weight", packed[module_name].quantized_weight()
            continue
        if tied and name == "lm_head.weight":
            continue
        yield name, tensor


def _packed_grid_error(name: str, weight: Any, ggml_type: str) -> CompressError:
    return CompressError(
        f"{name} is a {weight.bits}-bit {'symmetric' if weight.sym else 'asymmetric'} grid in groups of "
        f"{weight.group_size}, which {ggml_type} does not hold exactly; quantize with --bits "
        f"{4 if ggml_type == 'Q4_0' else 8} --sym --group-size 32 for a lossless {ggml_type.lower()} export, "
        "or export as f16"
    )


def _tensor_bytes(
    hf_name: str, value: Any, config: Any, float_type: str, lossless: str | None
) -> tuple[np.ndarray, str, bool]:
    """(array to write, GGML type, exact) for one tensor."""
    from compress.export.blocks import exact_type
    from compress.quantize.qweight import QuantizedWeight

    heads = _rotary_heads(hf_name, config)
    if isinstance(value, QuantizedWeight):
        kind = exact_type(value)
        if lossless is not None and kind == lossless:
            blocks = ggml_blocks(value)
            return (_rotary_rows(blocks, heads) if heads else blocks), kind, True
        if lossless is not None and value.in_features % BLOCK == 0:
            raise _packed_grid_error(hf_name, value, lossless)
        # Floats: asked for, or a width no 32-block divides, which llama.cpp's quantizer then gives
        # the same fallback type it gives any model's tensor of that width.
        value = value.dequantize(torch.float32)
    tensor = value.detach().to(torch.float32)
    if heads:
        tensor = torch.from_numpy(_rotary_rows(tensor.numpy(), heads))
    if tensor.ndim == 1:  # norms: llama.cpp wants F32
        return tensor.numpy(), "F32", False
    if float_type == "BF16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy(), "BF16", False
    return tensor.numpy().astype(_NUMPY_FLOATS[float_type]), float_type, False


def write_gguf(
    model: nn.Module,
    vocab: GGUFVocab,
    path: Path,
    *,
    float_type: str,
    lossless: str | None,
    file_type: int,
    name: str,
    manifest: dict[str, Any] | None = None,
) -> list[TensorPlan]:
    """Write `model` as a GGUF at `path`; returns what each tensor became.

    `float_type` (F32/F16/BF16) is the type of every dense 2-D tensor; `lossless` (Q4_0/Q8_0 or None)
    is the block type packed layers must match exactly (a packed layer that does not is a one-line
    error naming the options that would); with None, packed layers are written dequantized.
    """
    import gguf

    config = model.config
    check_architecture(config)
    name_of = gguf_names(config)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_metadata(writer, config, name, file_type)
    _write_vocab(writer, vocab)
    if manifest is not None:
        writer.add_string(MANIFEST_KEY, json.dumps(manifest, sort_keys=True))
    plans = []
    for hf_name, value in _weights(model):
        gguf_name = name_of(hf_name)
        array, ggml_type, exact = _tensor_bytes(hf_name, value, config, float_type, lossless)
        raw = gguf.GGMLQuantizationType[ggml_type]
        writer.add_tensor(gguf_name, array, raw_dtype=raw if ggml_type not in ("F32", "F16") else None)
        plans.append(TensorPlan(hf_name, gguf_name, ggml_type, exact))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return plans
