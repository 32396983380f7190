"""The public GPTQ and AWQ checkpoint layouts: a `QuantizedWeight` packed into int32 words, and back.

Other tools (transformers + optimum + gptqmodel, vLLM, TGI) load these tensors by name and shape,
so every detail below is a compatibility fact, not a choice:

- Integers are little-endian streams of `bits`-bit fields in int32 words: field k holds stream bits
  [k·bits, (k+1)·bits), word w holds stream bits [32w, 32w+32). 3-bit fields straddle words (32
  fields fill 3 words). A partial last word is zero-padded (gptqmodel's `math.ceil` buffers).
- GPTQ "v1" (`checkpoint_format: gptq`): `qweight` [in·bits/32, out] packs input rows; `qzeros`
  [groups, out·bits/32] packs (zero − 1) mod 2^bits along the output; `scales` fp16 [groups, out];
  `g_idx` int32 [in] (act-order permutes it).
- AWQ GEMM (`version: gemm`, 4-bit): `qweight` [in, out/8] and `qzeros` [groups, out/8] pack along
  the output with each block of eight columns interleaved (`AWQ_ORDER`); zeros are stored as is;
  groups are contiguous, so there is no `g_idx`.

Unpacking returns exactly the integers that were packed, and the scales rounded to fp16.
"""

from __future__ import annotations

import math
import sys

import torch

from compress.quantize.qweight import QuantizedWeight

WORD_BITS = 32

GPTQ_BITS = (2, 3, 4, 8)
AWQ_BITS = (4,)
#: AWQ GEMM stores output column AWQ_ORDER[k] of each block of eight in nibble k (bits 4k..4k+3).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_AWQ_INVERSE_ORDER = tuple(AWQ_ORDER.index(column) for column in range(8))

#: The dtype of every packed tensor, as the checkpoints store it.
PACKED_DTYPES: dict[str, torch.dtype] = {
    "qweight": torch.int32,
    "qzeros": torch.int32,
    "scales": torch.float16,
    "g_idx": torch.int32,
}


# --- bit streams ------------------------------------------------------------------------------

if sys.byteorder != "little":  # the byte views below read int32 words in memory order
    raise ImportError("compress.quantize.packing needs a little-endian machine")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _chunk(bits: int) -> tuple[int, int]:
    """(bytes, fields) of the shortest run of whole bytes holding whole fields.

    One byte holds 4, 2 or 1 fields of 2, 4 or 8 bits; three bytes hold 8 fields of 3 bits. A chunk
    is at most 24 bits, so int32 arithmetic on it never meets the sign bit.
    """
    if bits not in GPTQ_BITS:
        raise ValueError(f"packing supports {GPTQ_BITS} bits, not {bits}")
    common = math.gcd(bits, 8)
    return bits // common, 8 // common


def _join(parts: torch.Tensor, step: int) -> torch.Tensor:
    """OR the entries of the last dimension together, entry k shifted left by k·step (they never overlap)."""
    joined = parts[..., 0]
    for k in range(1, parts.shape[-1]):
        joined = joined | (parts[..., k] << step * k)
    return joined


def _split(joined: torch.Tensor, step: int, count: int, mask: int) -> torch.Tensor:
    """The inverse of `_join`: entry k of a new last dimension is (joined >> k·step) & mask."""
    shifts = step * torch.arange(count, dtype=torch.int32, device=joined.device)
    return (joined.unsqueeze(-1) >> shifts) & mask


def pack_fields(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the last dimension of `values` (integers in [0, 2^bits)) into int32 words, low bits first."""
    *lead, count = values.shape
    chunk_bytes, chunk_fields = _chunk(bits)
    # 32 fields of any width fill whole words; the padding fields are zeros.
    fields = torch.zeros(
        *lead, _ceil_div(count, WORD_BITS) * WORD_BITS, dtype=torch.int32, device=values.device
    )
    fields[..., :count] = values
    chunks = _join(fields.view(*lead, -1, chunk_fields), bits)
    data = _split(chunks, 8, chunk_bytes, 0xFF).to(torch.uint8)
    words = data.reshape(*lead, -1).view(torch.int32)
    return words[..., : _ceil_div(count * bits, WORD_BITS)].contiguous()


def unpack_fields(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first `count` fields of the int32 words in the last dimension, as int32 in [0, 2^bits)."""
    *lead, n_words = words.shape
    chunk_bytes, chunk_fields = _chunk(bits)
    stream = torch.zeros(*lead, _ceil_div(count, WORD_BITS) * bits, dtype=torch.int32, device=words.device)
    stream[..., :n_words] = words
    chunks = _join(stream.view(torch.uint8).view(*lead, -1, chunk_bytes).to(torch.int32), 8)
    fields = _split(chunks, bits, chunk_fields, (1 << bits) - 1)
    return fields.reshape(*lead, -1)[..., :count].contiguous()


# --- layouts ----------------------------------------------------------------------------------


def group_span(in_features: int, group_size: int) -> int:
    """The stored group span: -1 means one group over the whole input row."""
    return in_features if group_size == -1 else group_size


def _gptq_shapes(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, tuple]:
    if bits not in GPTQ_BITS:
        raise ValueError(f"GPTQ packing supports {GPTQ_BITS} bits, not {bits}")
    # 3-bit fields straddle words: widths that are multiples of 32 give the public layout exactly;
    # other widths are zero-padded to whole words, which only compress's own loader reads.
    groups = _ceil_div(in_features, group_span(in_features, group_size))
    return {
        "qweight": (_ceil_div(in_features * bits, WORD_BITS), out_features),
        "qzeros": (groups, _ceil_div(out_features * bits, WORD_BITS)),
        "scales": (groups, out_features),
        "g_idx": (in_features,),
    }


def _awq_shapes(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, tuple]:
    if bits not in AWQ_BITS:
        raise ValueError(f"AWQ GEMM packing supports {AWQ_BITS} bits, not {bits}")
    if out_features % len(AWQ_ORDER):
        raise ValueError(
            "AWQ GEMM interleaves output columns in blocks of 8: out_features must be a multiple of 8, "
            f"got {out_features}"
        )
    size = group_span(in_features, group_size)
    if in_features % size:
        raise ValueError(
            f"AWQ GEMM stores whole groups: in_features {in_features} is not a multiple of group size {size}"
        )
    words = out_features * bits // WORD_BITS
    groups = in_features // size
    return {"qweight": (in_features, words), "qzeros": (groups, words), "scales": (groups, out_features)}


def packed_shapes(
    fmt: str, in_features: int, out_features: int, bits: int, group_size: int
) -> dict[str, tuple[int, ...]]:
    """Name → shape of every packed tensor of one layer; a ValueError where the layout cannot hold it.

    The single source of the shapes, shared by the packers and by `QuantLinear`'s empty buffers.
    """
    if fmt == "gptq":
        return _gptq_shapes(in_features, out_features, bits, group_size)
    if fmt == "awq":
        return _awq_shapes(in_features, out_features, bits, group_size)
    raise ValueError(f"unknown packed format {fmt!r}; expected 'gptq' or 'awq'")


def _check_range(name: str, values: torch.Tensor, upper: int) -> None:
    """Out-of-range integers would silently overwrite their neighbours' bits (or name no group)."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper})")


def _check_quantized(qw: QuantizedWeight, shapes: dict[str, tuple]) -> None:
    groups, out_features = shapes["scales"]
    expected = (out_features, groups)
    for name, tensor in (("scales", qw.scales), ("zeros", qw.zeros)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {expected} [out, groups]")
    if tuple(qw.g_idx.shape) != (qw.in_features,):
        raise ValueError(f"g_idx has shape {tuple(qw.g_idx.shape)}; expected ({qw.in_features},)")
    _check_range(f"{qw.bits}-bit q", qw.q, 1 << qw.bits)
    _check_range(f"{qw.bits}-bit zeros", qw.zeros, 1 << qw.bits)
    _check_range("g_idx", qw.g_idx, groups)


def _check_packed(tensors: dict, shapes: dict[str, tuple]) -> None:
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"packed tensors lack {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}; this layout needs {shape}")


def _fp16_scales(qw: QuantizedWeight) -> torch.Tensor:
    """Scales as checkpoints store them: fp16 [groups, out]; an overflow is an error, not an inf."""
    scales = qw.scales.T.to(torch.float16).contiguous()
    if not torch.isfinite(scales).all():
        raise ValueError("scales do not fit in float16 (the GPTQ/AWQ checkpoint dtype)")
    return scales


# --- GPTQ -------------------------------------------------------------------------------------


def pack_gptq(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The GPTQ v1 tensors of one layer: qweight, qzeros (zero − 1), fp16 scales, g_idx."""
    shapes = packed_shapes("gptq", qw.in_features, qw.out_features, qw.bits, qw.group_size)
    _check_quantized(qw, shapes)
    stored_zeros = (qw.zeros.T.to(torch.int64) - 1) & ((1 << qw.bits) - 1)
    return {
        "qweight": pack_fields(qw.q, qw.bits).T.contiguous(),
        "qzeros": pack_fields(stored_zeros, qw.bits),
        "scales": _fp16_scales(qw),
        "g_idx": qw.g_idx.to(torch.int32).contiguous(),
    }


def unpack_gptq(tensors: dict, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """The exact inverse of `pack_gptq` (and the reader of gptqmodel/AutoGPTQ v1 checkpoints)."""
    g_idx = tensors["g_idx"].to(torch.int32)
    in_features, out_features = g_idx.numel(), tensors["scales"].shape[1]
    _check_packed(tensors, packed_shapes("gptq", in_features, out_features, bits, group_size))
    mask = (1 << bits) - 1
    zeros = (unpack_fields(tensors["qzeros"], bits, out_features) + 1) & mask
    return QuantizedWeight(
        q=unpack_fields(tensors["qweight"].T, bits, in_features),
        scales=tensors["scales"].T.contiguous(),
        zeros=zeros.T.contiguous(),
        g_idx=g_idx,
        bits=bits,
        group_size=group_size,
        sym=sym,
    )


# --- AWQ --------------------------------------------------------------------------------------


def _reorder_columns(columns: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Permute each consecutive block of eight columns of a [rows, cols] matrix by `order`."""
    rows, cols = columns.shape
    blocks = columns.reshape(rows, cols // len(order), len(order))
    return blocks[..., list(order)].reshape(rows, cols)


def _trivial_g_idx(in_features: int, group_size: int, device: torch.device) -> torch.Tensor:
    size = group_span(in_features, group_size)
    return torch.arange(in_features, dtype=torch.int32, device=device) // size


def pack_awq(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The AWQ GEMM tensors of one layer: interleaved qweight and qzeros, fp16 scales."""
    shapes = packed_shapes("awq", qw.in_features, qw.out_features, qw.bits, qw.group_size)
    _check_quantized(qw, shapes)
    if not torch.equal(
        qw.g_idx.to(torch.int32), _trivial_g_idx(qw.in_features, qw.group_size, qw.g_idx.device)
    ):
        raise ValueError("AWQ GEMM has no g_idx: groups must be contiguous (act-order is GPTQ only)")
    return {
        "qweight": pack_fields(_reorder_columns(qw.q.T, AWQ_ORDER), qw.bits),
        "qzeros": pack_fields(_reorder_columns(qw.zeros.T, AWQ_ORDER), qw.bits),
        "scales": _fp16_scales(qw),
    }


def unpack_awq(tensors: dict, group_size: int, sym: bool = False) -> QuantizedWeight:
    """The exact inverse of `pack_awq`.

    The layout always stores zeros, so symmetry is a config fact (`zero_point: false`), passed in.
    """
    bits = AWQ_BITS[0]
    in_features, out_features = tensors["qweight"].shape[0], tensors["scales"].shape[1]
    _check_packed(tensors, packed_shapes("awq", in_features, out_features, bits, group_size))

    def unpack(name: str) -> torch.Tensor:
        return _reorder_columns(unpack_fields(tensors[name], bits, out_features), _AWQ_INVERSE_ORDER)

    return QuantizedWeight(
        q=unpack("qweight").T.contiguous(),
        scales=tensors["scales"].T.contiguous(),
        zeros=unpack("qzeros").T.contiguous(),
        g_idx=_trivial_g_idx(in_features, group_size, tensors["qweight"].device),
        bits=bits,
        group_size=group_size,
        sym=sym,
    )


# --- config.json ------------------------------------------------------------------------------


def gptq_quantization_config(
    bits: int,
    group_size: int,
    sym: bool,
    desc_act: bool,
    *,
    damp_percent: float = 0.01,
    block_name_to_quantize: str | None = None,
    modules_in_block_to_quantize: list[list[str]] | None = None,
    meta: dict | None = None,
) -> dict:
    """config.json's `quantization_config` for a GPTQ v1 artifact.

    Keys are those transformers' `GPTQConfig` serializes (it feeds optimum's `GPTQQuantizer`) plus
    gptqmodel's own (`pack_dtype`, `lm_head`); `format` and its legacy alias `checkpoint_format`
    both say v1 so every reader sees zeros stored minus one. `block_name_to_quantize` and
    `modules_in_block_to_quantize` tell optimum which linears to replace when its guess is wrong.
    """
    if bits not in GPTQ_BITS:
        raise ValueError(f"GPTQ supports {GPTQ_BITS} bits, not {bits}")
    config = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "damp_percent": damp_percent,
        "true_sequential": True,
        "act_group_aware": False,
        "format": "gptq",
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
        "lm_head": False,
        "block_name_to_quantize": block_name_to_quantize,
        "modules_in_block_to_quantize": modules_in_block_to_quantize,
        "meta": meta,
    }
    return {key: value for key, value in config.items() if value is not None}


def awq_quantization_config(
    bits: int, group_size: int, zero_point: bool, *, modules_to_not_convert: list[str] | None = None
) -> dict:
    """config.json's `quantization_config` for an AWQ GEMM artifact.

    transformers' `AwqConfig` reads `version` (legacy) or `format`; gptqmodel reads `zero_point`
    as not-`sym`. Both are written so neither has to guess.
    """
    if bits not in AWQ_BITS:
        raise ValueError(f"AWQ GEMM supports {AWQ_BITS} bits, not {bits}")
    config = {
        "quant_method": "awq",
        "bits": bits,
        "group_size": group_size,
        "zero_point": zero_point,
        "sym": not zero_point,
        "desc_act": False,
        "version": "gemm",
        "format": "gemm",
        "modules_to_not_convert": modules_to_not_convert,
    }
    return {key: value for key, value in config.items() if value is not None}
