"""Packed artifacts (GPTQ and AWQ GEMM layouts): writing them, and loading them anywhere.

Writing: block by block as quantization finishes each one (`PackedWriter`), the quantized layers'
`weight` replaced by their packed tensors, then the untouched tensors outside the blocks and a
config.json with `quantization_config`. Loading for evaluation: the model is
built from its config without the quantization entry, the packed layers become `QuantLinear`s, and
the stored tensors are loaded into them: no gptqmodel, no CUDA needed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from compress.checkpoint import DEFAULT_SHARD_BYTES, CheckpointReader, ShardWriter
from compress.errors import CompressError
from compress.experts import EXPERTS_KEY, UnfusedExperts, unfuse_experts
from compress.modeling import (
    DecoderLayout,
    ModelSource,
    check_loading_report,
    find_decoder_blocks,
    load_config,
    resolve_device,
    resolve_dtype,
)
from compress.quantize.calibrated import LayerResult
from compress.quantize.config import QuantizeConfig
from compress.quantize.packing import (
    PACKED_DTYPES,
    awq_quantization_config,
    gptq_quantization_config,
    pack_awq,
    pack_gptq,
    packed_shapes,
    unpack_awq,
    unpack_gptq,
)
from compress.quantize.qlinear import (
    QuantLinear,
    dynamic_override,
    layer_format,
    quantized_module_names,
    replace_with_quant_linears,
)
from compress.quantize.rtn import effective_group_size
from compress.quantize.vocab import EMBEDDING_KEY, QuantEmbedding, VocabPlan

FORMATS = {"gptq": "gptq-packed", "awq": "awq-gemm"}


def layer_shapes(layout: DecoderLayout, config: QuantizeConfig) -> list[tuple[int, int, int]]:
    """(in, out, effective group size) of every quantized layer, known before any quantization."""
    return [
        (
            layer.in_features,
            layer.out_features,
            effective_group_size(layer.in_features, config.nominal_group_size),
        )
        for index in range(len(layout.blocks))
        for layer in layout.linear_layers(index)
    ]


def packed_format(config: QuantizeConfig, shapes: list[tuple[int, int, int]]) -> str:
    """AWQ results go in AWQ's GEMM layout when it can hold them (4-bit, output widths a multiple
    of 8, no quantized head or embedding); otherwise, like every other packed result, in the GPTQ
    layout (valid for AWQ's integers: contiguous groups, zero points stored)."""
    if config.method != "awq" or config.bits != 4 or config.head_bits or config.embedding_bits:
        return "gptq"  # no AWQ runtime reads a quantized head or embedding; gptqmodel reads the head
    for in_features, out_features, group_size in shapes:
        try:
            packed_shapes("awq", in_features, out_features, 4, group_size)
        except ValueError:
            return "gptq"
    return "awq"


def _dynamic_overrides(results: list[LayerResult], blocks_path: str, group_size: int) -> dict[str, dict]:
    """gptqmodel-style per-layer group sizes where the width forced a smaller divisor."""
    overrides: dict[str, dict] = {}
    for result in results:
        if result.group_size == group_size:
            continue
        relative = result.name.removeprefix(f"{blocks_path}.").split(".", 1)[1]
        pattern = rf"+:^{re.escape(blocks_path)}\.\d+\.{re.escape(relative)}$"
        overrides[pattern] = {"group_size": result.group_size}
    return overrides


def quantization_config_for(
    config: QuantizeConfig,
    fmt: str,
    results: list[LayerResult],
    blocks_path: str,
    vocab: VocabPlan | None = None,
    vocab_results: list[LayerResult] = (),
) -> dict:
    # The most common effective group size is the nominal one; layers that differ get an override.
    nominal = Counter(r.group_size for r in results).most_common(1)[0][0]
    if fmt == "awq":
        entry = awq_quantization_config(config.bits, nominal, zero_point=not config.symmetric)
    else:
        entry = gptq_quantization_config(
            config.bits, nominal, config.symmetric, desc_act=False, damp_percent=config.damp_percent
        )
    dynamic = _dynamic_overrides(results, blocks_path, nominal)
    for result in vocab_results:  # gptqmodel's per-module overrides: the head's own bits and groups
        dynamic[rf"+:^{re.escape(result.name)}$"] = {
            "bits": result.weight.bits,
            "group_size": result.group_size,
        }
    if dynamic:
        entry["dynamic"] = dynamic
    if vocab is not None and vocab.head is not None:
        entry["lm_head"] = True
    if vocab is not None and vocab.embedding is not None:
        entry[EMBEDDING_KEY] = {
            "module": vocab.embedding,
            "bits": vocab.embedding_bits,
            "shared_with": vocab.head if vocab.shared else None,
        }
    entry["quantizer"] = f"compress:{config.method}"
    return entry


class PackedWriter:
    """Writes a packed artifact block by block, as each block's quantization finishes.

    A finished block's quantized linears become their packed tensors (biases in float16, as the
    formats store them); its other tensors (norms, possibly AWQ-rescaled) go back in the dtype the
    source checkpoint stored them in. Everything outside the blocks is copied from the source
    checkpoint verbatim, since no method touches embeddings, the final norm or `lm_head`. A layer's
    integers are packed as soon as they are final (`pack_layer`), and dropped from its `LayerResult`
    once written, so memory does not grow per block.
    """

    def __init__(
        self,
        directory: Path,
        source: ModelSource,
        model: nn.Module,
        config: QuantizeConfig,
        fmt: str,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    ) -> None:
        self.directory = directory
        self.source = source
        self.config = config
        self.fmt = fmt
        self.blocks_path, _ = find_decoder_blocks(model)
        self.reader = CheckpointReader(source.path, model)
        self.shards = ShardWriter(directory, max_shard_bytes)
        self._outside = [name for name in model.state_dict() if not name.startswith(f"{self.blocks_path}.")]
        self.unfused_experts = any(isinstance(module, UnfusedExperts) for module in model.modules())

    def _source_dtype(self, name: str, tensor_dtype: torch.dtype) -> torch.dtype:
        return self.reader.dtype(name) if name in self.reader else tensor_dtype

    def _artifact_dtype(self, name: str, tensor_dtype: torch.dtype) -> torch.dtype:
        """float16 where the source has float32 (bfloat16 and float16 sources keep theirs), unless
        `keep_dtype`."""
        source_dtype = self._source_dtype(name, tensor_dtype)
        if source_dtype == torch.float32 and not self.config.keep_dtype:
            return torch.float16
        return source_dtype

    def _stored_dtype(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """An unquantized tensor (or a chunk of its rows) as the artifact stores it."""
        dtype = self._artifact_dtype(name, tensor.dtype)
        stored = tensor.to(dtype)
        if dtype == torch.float16 and not torch.isfinite(stored).all():
            raise CompressError(
                f"{name} has values beyond float16's range (±65504); pass --keep-dtype to store it in "
                f"{str(self._source_dtype(name, tensor.dtype)).removeprefix('torch.')}"
            )
        return stored

    def pack_layer(self, result: LayerResult) -> None:
        """Replace a layer's int32 integers by the format's packed tensors, as soon as they are final:
        the block's other stages and its output pass then run beside bits/32 of them (SmolLM2 at 4
        bits: 1.8 MB a block instead of 14 MB)."""
        if result.weight is not None:
            result.packed = (pack_awq if self.fmt == "awq" else pack_gptq)(result.weight)
            result.weight = None

    def write_block(self, index: int, block: nn.Module, results: list[LayerResult]) -> None:
        prefix = f"{self.blocks_path}.{index}."
        quantized = {r.name.removeprefix(prefix): r for r in results if r.name.startswith(prefix)}
        for name, tensor in block.state_dict().items():
            module, _, kind = name.rpartition(".")
            if module in quantized and kind == "weight":
                self.pack_layer(quantized[module])
                for key, value in quantized[module].packed.items():
                    self.shards.add(f"{prefix}{module}.{key}", value)
                quantized[module].packed = None
            elif module in quantized and kind == "bias":
                self.shards.add(prefix + name, tensor.half())
            else:
                self.shards.add(prefix + name, self._stored_dtype(prefix + name, tensor))

    def vocab_weights(self, vocab: VocabPlan) -> dict[str, torch.Tensor]:
        """The float matrices of the head and embedding `vocab` quantizes, from the source (a
        tied head's is the embedding's, which is all the checkpoint stores)."""
        weights = {}
        for name in (vocab.head, vocab.embedding):
            if name is not None:
                stored = (
                    f"{name}.weight" if f"{name}.weight" in self.reader else f"{vocab.embedding_name}.weight"
                )
                weights[name] = self.reader.get(stored)
        return weights

    def _copy(self, name: str, stored_as: str | None = None) -> None:
        """A float tensor from the source checkpoint (`stored_as`: under another name)."""
        source = stored_as or name
        shape, dtype = self.reader.header(source)
        stored = self._artifact_dtype(source, dtype)
        if math.prod(shape) * stored.itemsize <= self.shards.max_shard_bytes:
            self.shards.add(name, self._stored_dtype(source, self.reader.get(source)))
        else:  # larger than a shard (an embedding, streamed): converted and written by rows
            rows = (self._stored_dtype(source, chunk) for _, chunk in self.reader.row_chunks(source))
            self.shards.add_in_chunks(name, shape, stored, rows)

    def finish(
        self,
        results: list[LayerResult],
        vocab: VocabPlan | None = None,
        vocab_results: list[LayerResult] = (),
    ) -> dict:
        """Copy the tensors outside the blocks (or their packed form: a quantized head and
        embedding), name the shards, write the configs; returns the `quantization_config` written."""
        quantized = {f"{result.name}.weight" for result in vocab_results}
        if vocab is not None and vocab.shared:
            quantized.add(f"{vocab.embedding}.weight")  # the head's integers stand for both
        for name in self._outside:
            if name in quantized:
                continue
            if name in self.reader:
                self._copy(name)
            elif vocab is not None and vocab.unties and name == f"{vocab.head_name}.weight":
                self._copy(name, stored_as=f"{vocab.embedding_name}.weight")  # a float head, now its own
        for result in vocab_results:
            for key, value in (pack_awq if self.fmt == "awq" else pack_gptq)(result.weight).items():
                self.shards.add(f"{result.name}.{key}", value)
        self.shards.finish()
        quantization = quantization_config_for(
            self.config, self.fmt, results, self.blocks_path, vocab, vocab_results
        )
        if self.unfused_experts:
            quantization[EXPERTS_KEY] = "one linear pair per expert"
        load_config(self.source).save_pretrained(self.directory)
        config_file = self.directory / "config.json"
        raw = json.loads(config_file.read_text())
        raw["quantization_config"] = quantization
        if vocab is not None and vocab.unties:
            raw["tie_word_embeddings"] = False
        config_file.write_text(json.dumps(raw, indent=2) + "\n")
        generation = self.source.path / "generation_config.json"
        if generation.is_file():
            shutil.copy2(generation, self.directory / generation.name)
        return quantization


def _attach_quantized_embedding(
    model: nn.Module, quantization: dict, entry: dict, stored: dict[str, torch.Tensor], dtype: torch.dtype
) -> None:
    """Replace the embedding by a `QuantEmbedding` of its stored integers, or of the head's when
    the two share one quantized tensor (read before the head is repacked for its kernel)."""
    name = entry["module"]
    if entry.get("shared_with"):
        qw = model.get_submodule(entry["shared_with"]).quantized_weight()
    else:
        fmt, _, group_size, sym = layer_format(quantization)
        group_size = dynamic_override(name, quantization, "group_size", group_size)
        bits = dynamic_override(name, quantization, "bits", entry["bits"])
        qw = (
            unpack_gptq(stored, bits, group_size, sym)
            if fmt == "gptq"
            else unpack_awq(stored, group_size, sym)
        )
    model.set_submodule(name, QuantEmbedding.replacing(model.get_submodule(name), qw, dtype))


def load_packed(
    source: ModelSource, device: str, dtype: str, cache_dequantized: bool | None = None
) -> nn.Module:
    """A packed artifact as a model whose quantized layers run on the fastest kernel the device has.

    `dtype` `auto` is the runtime's (`runtime_dtype`: bfloat16 activations, which the int4 and
    int8 kernels need to be fast); `float32` scores exactly, every layer on the dequantize path
    (`prepare_runtime(model, torch.float32)` then runs the kernels in float32, for tests).
    Layers on the exact path dequantize on every call unless `cache_dequantized` (default: only in
    float32, where the exact path is all there is and scoring speed matters more than memory).
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from compress.quantize.runtime import prepare_runtime, runtime_dtype

    config = load_config(source)
    quantization = config.quantization_config
    quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    del config.quantization_config
    target = resolve_device(device)
    compute_dtype = resolve_dtype(dtype)
    compute_dtype = runtime_dtype(target) if compute_dtype == "auto" else compute_dtype
    # Parameters on the meta device: a dense copy of the model is never allocated, and the
    # checkpoint's tensors are assigned in place rather than copied.
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(source.path.glob("*.safetensors")):
        state.update(load_file(shard))
    if quantization.get(EXPERTS_KEY):
        unfuse_experts(model)  # on the meta device: the per-expert linears the checkpoint fills
    packed_names = quantized_module_names(state)
    embedding = quantization.get(EMBEDDING_KEY)
    embedding_name = embedding["module"] if embedding else None
    embedding_state = {
        key.removeprefix(f"{embedding_name}."): state.pop(key)
        for key in [key for key in state if embedding_name and key.startswith(f"{embedding_name}.")]
    }
    replace_with_quant_linears(model, quantization, packed_names - {embedding_name})
    for key, tensor in state.items():
        module, _, name = key.rpartition(".")
        is_packed = module in packed_names and name in PACKED_DTYPES  # stored exactly as they are
        if tensor.is_floating_point() and not is_packed:
            state[key] = tensor.to(compute_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if embedding_name:
        tied.add(f"{embedding_name}.weight")
    check_loading_report(source, {"missing_keys": set(missing) - tied, "unexpected_keys": unexpected})
    if embedding:
        _attach_quantized_embedding(model, quantization, embedding, embedding_state, compute_dtype)
    model.tie_weights()
    model = model.to(target).eval()
    cache = compute_dtype == torch.float32 if cache_dequantized is None else cache_dequantized
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.cache_dequantized = cache
    if compute_dtype != torch.float32:
        prepare_runtime(model, compute_dtype)
    return model
