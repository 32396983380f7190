"""GPTQ v1 and AWQ GEMM packing (exact both ways, hand-checked layouts) and the `QuantLinear` loader."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from compress.modeling import find_decoder_blocks, find_linear_layers
from compress.quantize.packing import (
    awq_quantization_config,
    gptq_quantization_config,
    pack_awq,
    pack_fields,
    pack_gptq,
    unpack_awq,
    unpack_fields,
    unpack_gptq,
)
from compress.quantize.qlinear import QuantLinear, quantized_module_names, replace_with_quant_linears
from compress.quantize.qweight import QuantizedWeight

PACKERS = {"gptq": pack_gptq, "awq": pack_awq}


def random_qw(
    bits: int,
    in_features: int,
    out_features: int,
    group_size: int,
    *,
    sym: bool,
    act_order: bool = False,
    seed: int = 0,
) -> QuantizedWeight:
    """Integers over their whole range (top bits set included), small random scales."""
    generator = torch.Generator().manual_seed(seed)
    size = in_features if group_size == -1 else group_size
    groups = math.ceil(in_features / size)
    g_idx = torch.arange(in_features, dtype=torch.int32) // size
    if act_order:
        g_idx = g_idx[torch.randperm(in_features, generator=generator)]
    levels = 1 << bits
    q = torch.randint(0, levels, (out_features, in_features), generator=generator, dtype=torch.int32)
    if sym:
        zeros = torch.full((out_features, groups), levels // 2, dtype=torch.int32)
    else:
        zeros = torch.randint(0, levels, (out_features, groups), generator=generator, dtype=torch.int32)
    scales = torch.rand(out_features, groups, generator=generator) * 0.02 + 0.001
    return QuantizedWeight(q, scales, zeros, g_idx, bits, group_size, sym)


def with_fp16_scales(qw: QuantizedWeight) -> QuantizedWeight:
    """The weight a checkpoint can hold: scales rounded to fp16 as the layouts store them."""
    return QuantizedWeight(qw.q, qw.scales.half(), qw.zeros, qw.g_idx, qw.bits, qw.group_size, qw.sym)


def assert_same_quantization(got: QuantizedWeight, expected: QuantizedWeight) -> None:
    assert torch.equal(got.q, expected.q)
    assert torch.equal(got.zeros, expected.zeros)
    assert torch.equal(got.g_idx, expected.g_idx)
    assert got.scales.dtype == torch.float16
    assert torch.equal(got.scales, expected.scales.half())
    assert (got.bits, got.group_size, got.sym) == (expected.bits, expected.group_size, expected.sym)


def four_bit_one_group(q: torch.Tensor, zeros: list[int]) -> QuantizedWeight:
    """Group size -1 and unit scales: the hand-checked layouts only look at the integers."""
    out_features, in_features = q.shape
    zero_column = torch.tensor(zeros, dtype=torch.int32).reshape(out_features, 1)
    g_idx = torch.zeros(in_features, dtype=torch.int32)
    return QuantizedWeight(q, torch.ones(out_features, 1), zero_column, g_idx, 4, -1, sym=False)


def as_int32(word: int) -> int:
    """An unsigned 32-bit pattern read as the signed int32 torch stores."""
    return word - (1 << 32) if word >= 1 << 31 else word


# --- bit streams ------------------------------------------------------------------------------


def test_three_bit_fields_straddle_words():
    values = torch.zeros(32, dtype=torch.int32)
    values[10] = 0b101  # stream bits 30..32: bit 30 of word 0 and bit 0 of word 1
    values[21] = 0b011  # stream bits 63..65: bit 31 of word 1 and bit 0 of word 2
    assert pack_fields(values, 3).tolist() == [1 << 30, as_int32((1 << 31) | 1), 1]
    assert pack_fields(torch.full((32,), 7), 3).tolist() == [-1, -1, -1]
    assert torch.equal(unpack_fields(pack_fields(values, 3), 3, 32), values)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fields_round_trip_with_padding(bits):
    values = torch.randint(0, 1 << bits, (3, 75), generator=torch.Generator().manual_seed(bits))
    packed = pack_fields(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (3, math.ceil(75 * bits / 32))
    assert torch.equal(unpack_fields(packed, bits, 75), values.to(torch.int32))


# --- GPTQ -------------------------------------------------------------------------------------

GPTQ_CASES = [
    # bits, in, out, group size, act-order
    (2, 344, 172, 86, True),
    (3, 128, 96, 32, True),
    (3, 64, 32, -1, False),
    (4, 344, 172, 86, True),
    (4, 172, 344, 43, False),
    (4, 256, 64, 64, False),
    (4, 256, 64, 128, True),
    (8, 172, 88, 128, False),
    (8, 256, 40, -1, False),
]


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("bits", "in_features", "out_features", "group_size", "act_order"), GPTQ_CASES)
def test_gptq_round_trip_is_exact(bits, in_features, out_features, group_size, act_order, sym):
    qw = random_qw(bits, in_features, out_features, group_size, sym=sym, act_order=act_order, seed=bits)
    packed = pack_gptq(qw)
    groups = qw.scales.shape[1]
    assert packed["qweight"].shape == (math.ceil(in_features * bits / 32), out_features)
    assert packed["qzeros"].shape == (groups, math.ceil(out_features * bits / 32))
    assert packed["scales"].shape == (groups, out_features) and packed["scales"].dtype == torch.float16
    assert packed["g_idx"].dtype == torch.int32
    assert all(packed[name].dtype == torch.int32 for name in ("qweight", "qzeros"))
    assert_same_quantization(unpack_gptq(packed, bits, group_size, sym), qw)


def test_gptq_qweight_packs_input_rows_low_bits_first():
    q = torch.arange(1, 9, dtype=torch.int32).reshape(1, 8)  # one output, inputs 0..7 hold 1..8
    assert pack_gptq(four_bit_one_group(q, [8]))["qweight"].tolist() == [[as_int32(0x87654321)]]


def test_gptq_v1_stores_zeros_minus_one():
    qw = four_bit_one_group(torch.zeros(8, 8, dtype=torch.int32), [1, 2, 3, 4, 5, 6, 7, 0])
    # (zero − 1) mod 16 per field, output column j in bits 4j..4j+3: 0,1,…,6 then 15 for zero 0.
    assert pack_gptq(qw)["qzeros"].tolist() == [[as_int32(0xF6543210)]]
    assert torch.equal(unpack_gptq(pack_gptq(qw), 4, -1, False).zeros, qw.zeros)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gptq_v1_zeros_match_gptqmodel_word_offset(bits):
    """gptqmodel converts v1 → v2 by adding one to every field of each word at once (0x11111111 for
    4 bits); per-field (zero − 1) agrees with that whenever no zero is 0."""
    qw = random_qw(bits, 64, 64, 32, sym=False, seed=bits)
    qw.zeros.clamp_(min=1)
    ones = sum(1 << shift for shift in range(0, 32, bits))
    stored = pack_gptq(qw)["qzeros"].to(torch.int64) & 0xFFFFFFFF
    v2 = pack_fields(qw.zeros.T, bits).to(torch.int64) & 0xFFFFFFFF
    assert torch.equal((stored + ones) & 0xFFFFFFFF, v2)


# --- AWQ --------------------------------------------------------------------------------------

AWQ_CASES = [(344, 176, 86), (256, 64, 128), (256, 64, 32), (128, 64, -1), (172, 88, 43)]


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("in_features", "out_features", "group_size"), AWQ_CASES)
def test_awq_round_trip_is_exact(in_features, out_features, group_size, sym):
    qw = random_qw(4, in_features, out_features, group_size, sym=sym, seed=in_features)
    packed = pack_awq(qw)
    groups = qw.scales.shape[1]
    assert set(packed) == {"qweight", "qzeros", "scales"}
    assert packed["qweight"].shape == (in_features, out_features // 8)
    assert packed["qzeros"].shape == (groups, out_features // 8)
    assert packed["scales"].shape == (groups, out_features)
    assert_same_quantization(unpack_awq(packed, group_size, sym=sym), qw)


def test_awq_nibble_order():
    q = torch.zeros(8, 8, dtype=torch.int32)
    q[:, 0] = torch.arange(1, 9, dtype=torch.int32)  # input 0: output column c holds c + 1
    qw = four_bit_one_group(q, [8] * 8)
    # Nibbles 0..7 (low first) hold columns 0,2,4,6,1,3,5,7, i.e. values 1,3,5,7,2,4,6,8.
    assert pack_awq(qw)["qweight"][0, 0].item() == as_int32(0x86427531)
    assert pack_awq(qw)["qzeros"][0, 0].item() == as_int32(0x88888888)


# --- layouts that cannot hold a matrix ------------------------------------------------------


@pytest.mark.parametrize(
    ("pack", "qw", "message"),
    [
        (pack_gptq, random_qw(5, 64, 64, 32, sym=True), "bits"),
        (pack_awq, random_qw(4, 344, 172, 86, sym=False), "multiple of 8"),
        (pack_awq, random_qw(4, 100, 64, 64, sym=False), "group size"),
        (pack_awq, random_qw(4, 128, 64, 32, sym=False, act_order=True), "g_idx"),
        (pack_awq, random_qw(3, 128, 64, 32, sym=False), "bits"),
    ],
)
def test_unpackable_shapes_are_clear_errors(pack, qw, message):
    with pytest.raises(ValueError, match=message):
        pack(qw)


def test_out_of_range_integers_are_refused():
    qw = random_qw(4, 64, 32, 32, sym=False)
    qw.q[0, 0] = 16
    with pytest.raises(ValueError, match="q must lie in"):
        pack_gptq(qw)


# --- QuantLinear ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    ("fmt", "qw"),
    [
        ("gptq", random_qw(4, 344, 172, 86, sym=False, act_order=True)),
        ("gptq", random_qw(3, 128, 64, 32, sym=True)),
        ("awq", random_qw(4, 172, 88, 43, sym=False)),
    ],
)
def test_quant_linear_forward_matches_dequantized_weight(fmt, qw, with_bias):
    bias = torch.randn(qw.out_features) if with_bias else None
    layer = QuantLinear.from_quantized(qw, bias, fmt)
    x = torch.randn(2, 5, qw.in_features)
    expected = F.linear(x, with_fp16_scales(qw).dequantize(), bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    assert_same_quantization(layer.quantized_weight(), qw)
    expected_keys = {"qweight", "qzeros", "scales"} | ({"g_idx"} if fmt == "gptq" else set())
    assert set(layer.state_dict()) == expected_keys | ({"bias"} if with_bias else set())


def test_quant_linear_cache_and_casts_keep_packed_tensors_exact():
    qw = random_qw(4, 64, 32, 32, sym=False)
    layer = QuantLinear.from_quantized(qw, None, "gptq", cache_dequantized=True)
    x = torch.randn(3, 64)
    first = layer(x)
    assert layer._cached_weight is not None and torch.equal(layer(x), first)
    layer.to(torch.bfloat16)  # a model-wide cast must not round the checkpoint's fp16 scales
    assert layer.scales.dtype == torch.float16 and layer._cached_weight is None
    assert_same_quantization(layer.quantized_weight(), qw)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


# --- config.json --------------------------------------------------------------------------------


def test_quantization_configs_are_read_by_transformers():
    from transformers import AwqConfig, GPTQConfig
    from transformers.quantizers.auto import AutoQuantizationConfig

    gptq = AutoQuantizationConfig.from_dict(gptq_quantization_config(3, 86, False, True))
    assert isinstance(gptq, GPTQConfig)
    assert (gptq.bits, gptq.group_size, gptq.sym, gptq.desc_act, gptq.format) == (3, 86, False, True, "gptq")
    assert gptq.to_dict()["checkpoint_format"] == "gptq"
    awq = AutoQuantizationConfig.from_dict(
        awq_quantization_config(4, 128, True, modules_to_not_convert=["lm_head"])
    )
    assert isinstance(awq, AwqConfig)
    assert (awq.bits, awq.group_size, awq.zero_point, awq.format) == (4, 128, True, "gemm")
    assert awq.to_dict()["version"] == "gemm" and awq.modules_to_not_convert == ["lm_head"]
    with pytest.raises(ValueError, match="bits"):
        awq_quantization_config(3, 128, True)


# --- loading a packed checkpoint into a transformers model ------------------------------------


def write_packed_checkpoint(model, fmt: str, path) -> set[str]:
    """Quantize every block linear of `model` at random (setting its dense weight to the dequantized
    one), write the packed checkpoint to `path`, return the packed module names."""
    checkpoint = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    blocks_path, blocks = find_decoder_blocks(model)
    names = set()
    for index, block in enumerate(blocks):
        for seed, layer in enumerate(find_linear_layers(block)):
            name = f"{blocks_path}.{index}.{layer.name}"
            qw = random_qw(
                4,
                layer.in_features,
                layer.out_features,
                16,
                sym=fmt == "awq",
                act_order=fmt == "gptq",
                seed=seed,
            )
            dense = with_fp16_scales(qw).dequantize()
            layer.module.weight.data.copy_(dense.T if layer.transposed else dense)
            del checkpoint[f"{name}.weight"]
            checkpoint.update({f"{name}.{key}": tensor for key, tensor in PACKERS[fmt](qw).items()})
            names.add(name)
    save_file(checkpoint, str(path))
    return names


@pytest.mark.parametrize(("architecture", "fmt"), [("llama", "gptq"), ("llama", "awq"), ("gpt2", "gptq")])
def test_packed_checkpoint_loads_into_quant_linears(tiny_model_dir, tmp_path, architecture, fmt):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir(architecture)).eval()
    packed_names = write_packed_checkpoint(reference, fmt, tmp_path / "model.safetensors")
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert quantized_module_names(tensors) == packed_names
    config = (
        gptq_quantization_config(4, 16, False, True)
        if fmt == "gptq"
        else awq_quantization_config(4, 16, False)
    )

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(architecture)).eval()
    # GPT-2 (Conv1D) goes through the explicit names, Llama through the default discovery.
    replace_with_quant_linears(model, config, packed_names if architecture == "gpt2" else None)
    model.load_state_dict(tensors, strict=True)

    swapped = {name for name, module in model.named_modules() if isinstance(module, QuantLinear)}
    assert swapped == packed_names
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_replace_names_what_it_cannot_swap(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match="does not have"):
        replace_with_quant_linears(
            model, awq_quantization_config(4, 16, True), {"model.layers.9.mlp.up_proj"}
        )
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj: .*group size"):
        replace_with_quant_linears(model, awq_quantization_config(4, 24, True))
    mlp = ["gate_proj", "up_proj", "down_proj"]
    skip = {"modules_to_not_convert": mlp, **gptq_quantization_config(4, 16, True, False)}
    replace_with_quant_linears(model, skip)
    swapped = [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]
    assert len(swapped) == 8 and not any(".mlp." in name for name in swapped)


def test_three_bit_pads_widths_that_32_does_not_divide():
    """172 inputs and 172 outputs (stories260K's MLP): padded to whole words, exact both ways."""
    qw = random_qw(3, 172, 172, 86, sym=False)
    back = unpack_gptq(pack_gptq(qw), bits=3, group_size=86, sym=False)
    assert (
        torch.equal(back.q, qw.q) and torch.equal(back.zeros, qw.zeros) and torch.equal(back.g_idx, qw.g_idx)
    )
