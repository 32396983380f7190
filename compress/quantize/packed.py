"""Packed artifacts (GPTQ and AWQ GEMM layouts): writing them, and loading them anywhere.

Writing: transformers saves the model (config, dense tensors for everything not quantized), then
each safetensors shard is rewritten with the quantized layers' `weight` replaced by their packed
tensors, and `quantization_config` is added to config.json. Loading for evaluation: the model is
built from its config without the quantization entry, the packed layers become `QuantLinear`s, and
the stored tensors are loaded into them: no gptqmodel, no CUDA needed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compress.modeling import ModelSource, find_decoder_blocks, load_config, resolve_device, resolve_dtype
from compress.quantize.calibrated import LayerResult
from compress.quantize.config import QuantizeConfig
from compress.quantize.packing import (
    awq_quantization_config,
    gptq_quantization_config,
    pack_awq,
    pack_gptq,
    packed_shapes,
)
from compress.quantize.qlinear import quantized_module_names, replace_with_quant_linears

FORMATS = {"gptq": "gptq-packed", "awq": "awq-gemm"}


def packed_format(config: QuantizeConfig, results: list[LayerResult] | None = None) -> str:
    """AWQ results go in AWQ's GEMM layout when it can hold them (4-bit, output widths a multiple
    of 8); otherwise, like every other packed result, in the GPTQ layout (valid for AWQ's integers:
    contiguous groups, zero points stored)."""
    if config.method != "awq" or config.bits != 4:
        return "gptq"
    for result in results or []:
        try:
            packed_shapes(
                "awq", result.weight.in_features, result.weight.out_features, 4, result.weight.group_size
            )
        except ValueError:
            return "gptq"
    return "awq"


def _dynamic_overrides(results: list[LayerResult], blocks_path: str, group_size: int) -> dict[str, dict]:
    """gptqmodel-style per-layer group sizes where the width forced a smaller divisor."""
    overrides: dict[str, dict] = {}
    for result in results:
        if result.weight.group_size == group_size:
            continue
        relative = result.name.removeprefix(f"{blocks_path}.").split(".", 1)[1]
        pattern = rf"+:^{re.escape(blocks_path)}\.\d+\.{re.escape(relative)}$"
        overrides[pattern] = {"group_size": result.weight.group_size}
    return overrides


def quantization_config_for(config: QuantizeConfig, results: list[LayerResult], blocks_path: str) -> dict:
    fmt = packed_format(config, results)
    # The most common effective group size is the nominal one; layers that differ get an override.
    nominal = Counter(r.weight.group_size for r in results).most_common(1)[0][0]
    if fmt == "awq":
        entry = awq_quantization_config(config.bits, nominal, zero_point=not config.symmetric)
    else:
        entry = gptq_quantization_config(
            config.bits, nominal, config.symmetric, desc_act=False, damp_percent=config.damp_percent
        )
    dynamic = _dynamic_overrides(results, blocks_path, nominal)
    if dynamic:
        entry["dynamic"] = dynamic
    entry["quantizer"] = f"compress:{config.method}"
    return entry


def write_packed(
    model: nn.Module, results: list[LayerResult], config: QuantizeConfig, directory: Path
) -> dict:
    """Save `model` with the layers in `results` packed; returns the `quantization_config` written."""
    fmt = packed_format(config, results)
    pack = pack_awq if fmt == "awq" else pack_gptq
    by_name = {result.name: result for result in results}
    model.save_pretrained(directory)
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else None
    for shard in sorted(directory.glob("*.safetensors")):
        tensors = load_file(shard)
        for name in [
            key.removesuffix(".weight") for key in tensors if key.removesuffix(".weight") in by_name
        ]:
            bias = tensors.get(f"{name}.bias")
            del tensors[f"{name}.weight"]
            for key, value in pack(by_name[name].weight).items():
                tensors[f"{name}.{key}"] = value.contiguous()
                if index is not None:
                    index["weight_map"][f"{name}.{key}"] = shard.name
            if index is not None:
                index["weight_map"].pop(f"{name}.weight", None)
            if bias is not None:
                tensors[f"{name}.bias"] = bias.half()
        save_file(tensors, shard, metadata={"format": "pt"})
    if index is not None:
        index_file.write_text(json.dumps(index, indent=2))
    blocks_path, _ = find_decoder_blocks(model)
    quantization = quantization_config_for(config, results, blocks_path)
    config_file = directory / "config.json"
    raw = json.loads(config_file.read_text())
    raw["quantization_config"] = quantization
    config_file.write_text(json.dumps(raw, indent=2) + "\n")
    return quantization


def load_packed(source: ModelSource, device: str, dtype: str) -> nn.Module:
    """A packed artifact as a model whose quantized layers dequantize on the fly (CPU or CUDA)."""
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    quantization = config.quantization_config
    quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    del config.quantization_config
    compute_dtype = resolve_dtype(dtype)
    compute_dtype = torch.float16 if compute_dtype == "auto" else compute_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(source.path.glob("*.safetensors")):
        state.update(load_file(shard))
    replace_with_quant_linears(model, quantization, quantized_module_names(state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.tie_weights()
    return model.to(resolve_device(device)).eval()
