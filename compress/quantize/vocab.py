"""The embedding table and the output head, quantized (`--head-bits`, `--embedding-bits`).

Small modern models are mostly vocabulary: SmolLM2's 49,152 × 576 embedding is a fifth of its
weights and, tied to the output head, a third of a 4-bit decode step; Gemma 3 270M's 262,144 × 640
is 63% of its weights. Left in bfloat16 they cap both the size and the speed a packed artifact can
reach.

- **The head** is one more packed linear (`lm_head.qweight`, … in the artifact's layout, with
  gptqmodel's `lm_head: true` and a `dynamic` entry for its own bits and groups): at 8 bits one
  scale per row, which torch's int8 kernel runs; at 4 bits the artifact's groups, which the int4
  kernel runs.
- **The embedding** is stored the same way under its own name and becomes a `QuantEmbedding`,
  which dequantizes only the rows it looks up. When the two are tied and quantized alike they stay
  one tensor: stored once, under the head's name, which the embedding reads at load.

Both are rounded to the nearest grid point (RTN, as llama.cpp rounds `output.weight` without an
importance matrix): the head's inputs are the final norm's output, which a GPTQ pass would need to
collect after the last block, and its rounding error is measured (docs/decisions.md) to be small.
Other runtimes (transformers with gptqmodel, vLLM) load a quantized head; none loads a quantized
embedding, so that stays off unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.quantize.calibrated import LayerResult
from compress.quantize.qweight import QuantizedWeight
from compress.quantize.rtn import effective_group_size, rtn_quantize

#: Rows rounded at once: a 262,144-row table in float32 copies is 0.7 GB per copy.
ROWS_PER_STEP = 16384
#: The quantization_config entry naming a quantized embedding (no other runtime reads it).
EMBEDDING_KEY = "compress_embedding"
#: How a quantized embedding runs, as `runtime_summary` and `compress inspect` name it.
LOOKUP_KERNEL = "row-lookup"


@dataclass(frozen=True)
class VocabPlan:
    """Which of the two vocabulary matrices are quantized, and how they are stored."""

    head_name: str  # the output head's module name
    embedding_name: str  # the input embedding's module name
    head_bits: int | None  # None: kept float
    embedding_bits: int | None
    tied: bool  # the source ties them (one tensor)

    @property
    def head(self) -> str | None:
        """The head's name when it is quantized."""
        return self.head_name if self.head_bits else None

    @property
    def embedding(self) -> str | None:
        """The embedding's name when it is quantized."""
        return self.embedding_name if self.embedding_bits else None

    @property
    def shared(self) -> bool:
        """Tied and quantized alike: one quantized tensor, stored under the head's name."""
        return self.tied and self.head is not None and self.head_bits == self.embedding_bits

    @property
    def unties(self) -> bool:
        """A tied source whose head and embedding become two tensors (config says so)."""
        return self.tied and (self.head is not None or self.embedding is not None)


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    return next((name for name, candidate in model.named_modules() if candidate is module), None)


def vocab_plan(model: nn.Module, head_bits: int | None, embedding_bits: int | None) -> VocabPlan:
    config = model.config.get_text_config()
    return VocabPlan(
        head_name=_module_name(model, model.get_output_embeddings()),
        embedding_name=_module_name(model, model.get_input_embeddings()),
        head_bits=head_bits,
        embedding_bits=embedding_bits,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


def _group_size(bits: int, in_features: int, nominal_group: int) -> int:
    """8 bits: one scale per row (torch's int8 kernel); 4 bits: the artifact's groups."""
    return in_features if bits == 8 else effective_group_size(in_features, nominal_group)


def quantize_rows(weight: torch.Tensor, bits: int, nominal_group: int, sym: bool) -> QuantizedWeight:
    """RTN of a [rows, in] matrix, a block of rows at a time (rows are independent)."""
    group = _group_size(bits, weight.shape[1], nominal_group)
    parts = [
        rtn_quantize(weight[i : i + ROWS_PER_STEP], bits, group, sym)
        for i in range(0, weight.shape[0], ROWS_PER_STEP)
    ]
    return QuantizedWeight(
        torch.cat([part.q for part in parts]),
        torch.cat([part.scales for part in parts]),
        torch.cat([part.zeros for part in parts]),
        parts[0].g_idx,
        bits,
        group,
        sym,
    )


def quantize_vocab(
    plan: VocabPlan, weights: dict[str, torch.Tensor], nominal_group: int, sym: bool
) -> list[LayerResult]:
    """The quantized head and embedding (`weights`: their float matrices by module name; a tied
    head's is the embedding's)."""
    results = []
    for name, bits in ((plan.head, plan.head_bits), (plan.embedding, plan.embedding_bits)):
        if name is None or (name == plan.embedding and plan.shared):
            continue
        weight = weights[name]
        qw = quantize_rows(weight, bits, nominal_group, sym)
        error = (qw.dequantize() - weight.float()).pow(2).mean() / weight.float().pow(2).mean().clamp_min(
            1e-30
        )
        results.append(LayerResult(name, qw, qw.group_size, {"relative_mse": error.item()}))
    return results


class QuantEmbedding(nn.Module):
    """An embedding table kept as integers, one grid per (row, group): each lookup dequantizes
    only the rows it reads. Scaled embeddings (Gemma's √hidden) keep their scale."""

    def __init__(
        self, qw: QuantizedWeight, dtype: torch.dtype, embed_scale: torch.Tensor | float | None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qw.out_features, qw.in_features
        self.bits, self.group_size = qw.bits, qw.group_size
        self.dtype = dtype
        codes = qw.q.to(torch.uint8)
        if qw.bits <= 4:  # two codes a byte: low nibble even columns, high nibble odd ones
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        scales = qw.scales.to(torch.float32)
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("offsets", (-qw.zeros.to(torch.float32) * scales).to(dtype))
        self.embed_scale = embed_scale

    @classmethod
    def replacing(cls, module: nn.Module, qw: QuantizedWeight, dtype: torch.dtype) -> QuantEmbedding:
        """The quantized stand-in for `module`, with its embedding scale if it has one."""
        return cls(qw, dtype, getattr(module, "embed_scale", None))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[input_ids]
        if self.bits <= 4:
            codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).flatten(-2)
        groups = self.embedding_dim // self.group_size
        rows = codes.to(self.dtype).unflatten(-1, (groups, self.group_size))
        rows = rows * self.scales[input_ids].unsqueeze(-1) + self.offsets[input_ids].unsqueeze(-1)
        rows = rows.flatten(-2)
        if self.embed_scale is not None:
            rows = rows * torch.as_tensor(self.embed_scale, dtype=rows.dtype, device=rows.device)
        return rows

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}"
