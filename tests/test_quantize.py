"""Calibrated weight quantization on the trained demo model: the literature's orderings, exact
packed round trips, artifacts that load, and one-line errors for bad requests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error
from safetensors.torch import load_file, save_file

import compress
from compress.artifact import describe, read_manifest
from compress.data import sample_windows, sequential_windows
from compress.evaluate.divergence import kl_divergence
from compress.modeling import discover_layout, load_model, load_tokenizer, resolve_model
from compress.quantize.calibrated import quantize_gptq, quantize_rtn
from compress.quantize.config import QuantizeConfig
from compress.quantize.packed import PackedWriter, load_packed

pytestmark = pytest.mark.slow

CALIBRATION = "builtin:python-stdlib:train"
HELDOUT = "builtin:python-stdlib:heldout"


@pytest.fixture(scope="module")
def setting(demo):
    """The demo model's source, calibration windows, held-out windows and baseline log-probs."""
    source = resolve_model(demo[0])
    tokenizer = load_tokenizer(source)
    calibration = sample_windows(tokenizer, CALIBRATION, samples=32, seq_len=256, seed=0).input_ids
    heldout = sequential_windows(tokenizer, HELDOUT, seq_len=256, max_tokens=16 * 256).input_ids
    baseline = load_model(source, dtype="float32", device="cpu")
    return source, calibration, heldout, _log_probs(baseline, heldout)


def _log_probs(model, windows) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=windows).logits[:, :-1].float()
    return F.log_softmax(logits, -1).reshape(-1, logits.shape[-1])


def _quantized(setting, method: str, bits: int, **options):
    source, calibration, _, _ = setting
    model = load_model(source, dtype="float32", device="cpu")
    layout = discover_layout(model)
    config = QuantizeConfig(method=method, bits=bits, seq_len=256, **options)
    results = (
        quantize_rtn(layout, config) if method == "rtn" else quantize_gptq(model, layout, calibration, config)
    )
    return model, results, config


def _kld(setting, model) -> float:
    _, _, heldout, baseline = setting
    return kl_divergence(baseline, _log_probs(model, heldout)).mean().item()


@pytest.fixture(scope="module")
def klds(setting) -> dict[tuple[str, int], float]:
    """Each method at its own convention (GPTQ symmetric, AWQ with zero points) and RTN both ways."""
    variants = {
        "rtn-sym": ("rtn", True),
        "rtn-asym": ("rtn", False),
        "gptq": ("gptq", None),
        "awq": ("awq", None),
    }
    return {
        (name, bits): _kld(setting, _quantized(setting, method, bits, sym=sym)[0])
        for name, (method, sym) in variants.items()
        for bits in (4, 3)
    }


@pytest.mark.quality
def test_gptq_and_awq_beat_rtn_at_4_and_3_bits(klds, record_property):
    record_property("kld", {f"{name}-{bits}": kld for (name, bits), kld in klds.items()})
    for bits in (4, 3):
        assert klds[("gptq", bits)] < klds[("rtn-sym", bits)]
        assert (
            klds[("awq", bits)] < klds[("rtn-asym", bits)]
        )  # same grid: the scales and clipping are the gain
    assert klds[("gptq", 3)] <= 0.6 * klds[("rtn-sym", 3)]
    assert klds[("rtn-sym", 4)] < klds[("rtn-sym", 3)]


def test_packed_artifact_reloads_to_the_same_model(setting, tmp_path):
    model, results, config = _quantized(setting, "gptq", 4, sym=False, keep_dtype=True)
    writer = PackedWriter(tmp_path, setting[0], model, config, "gptq")
    for index, block in enumerate(discover_layout(model).blocks):
        writer.write_block(index, block, results)
    writer.finish(results)
    assert all(result.weight is None for result in results)  # integers released once written
    reloaded = load_packed(resolve_model(tmp_path), "cpu", "float32")
    heldout = setting[2][:2]
    with torch.inference_mode():
        assert torch.allclose(reloaded(input_ids=heldout).logits, model(input_ids=heldout).logits, atol=1e-4)
    # Per-layer group sizes for a request of 128: 64 for 192 (the largest kernel group dividing it)
    # and 86 for 344 (no kernel group divides it); the most common one is the nominal size and the
    # others are per-layer overrides.
    quantization = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert quantization["group_size"] == 64 and quantization["sym"] is False
    assert {v["group_size"] for v in quantization["dynamic"].values()} == {86}


def test_gptq_artifact_through_the_api(demo, tmp_path):
    out = compress.quantize(
        demo[0], tmp_path / "gptq", bits=4, calib=CALIBRATION, calib_samples=16, seq_len=128, device="cpu"
    )
    manifest = read_manifest(out)
    assert manifest.method == "gptq" and manifest.format == "gptq-packed"
    assert manifest.calibration["samples"] == 16 and manifest.calibration["seq_len"] == 128
    layers = manifest.extra["layers"]
    assert len(layers) == 3 * 7 and all(0 < v["weight_rel_error"] < 0.2 for v in layers.values())
    info = describe(out)
    assert info["parameters"] == manifest.model["parameters"]
    # The packed layers cost what the GPTQ layout's theory says: 4-bit weights, an fp16 scale and a
    # 4-bit zero per group and output, an int32 g_idx per input.
    layout = discover_layout(load_model(resolve_model(demo[0]), device="cpu"))
    theory_bits = weights = 0
    for index in range(len(layout.blocks)):
        for layer in layout.linear_layers(index):
            groups = layer.in_features // layers[f"model.layers.{index}.{layer.name}"]["group_size"]
            weights += layer.in_features * layer.out_features
            theory_bits += layer.in_features * layer.out_features * 4 + groups * layer.out_features * 20
            theory_bits += layer.in_features * 32
    assert info["quantized_layers"]["parameters"] == weights
    assert info["quantized_layers"]["bits_per_weight"] == pytest.approx(theory_bits / weights, rel=0.02)
    tensors = load_file(out / "model.safetensors")
    assert (
        "model.layers.0.mlp.down_proj.qweight" in tensors
        and "model.layers.0.mlp.down_proj.weight" not in tensors
    )


def test_awq_artifact_in_the_awq_gemm_layout(demo, tmp_path):
    out = compress.quantize(
        demo[0], tmp_path / "awq", method="awq", bits=4, calib=CALIBRATION, calib_samples=8, seq_len=128
    )
    quantization = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == "awq" and quantization["zero_point"] is True
    assert read_manifest(out).format == "awq-gemm"
    model = load_packed(resolve_model(out), "cpu", "float32")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"


def test_bad_quantization_requests(run_cli, demo, tiny_model_dir, tmp_path):
    model = demo[0]
    broken = tmp_path / "nan-model"
    broken.mkdir()
    for file in model.iterdir():
        if file.is_file():
            (broken / file.name).write_bytes(file.read_bytes())
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("def f():\n    return 1\n")
    rtn = compress.quantize(model, tmp_path / "rtn", method="rtn", bits=4, device="cpu")
    out = tmp_path / "out"
    cases = [
        (("quantize", model, "-m", "gptq", "--bits", "5", "--out", out), "supports --bits"),
        (("quantize", model, "--method", "nf4", "--bits", "8", "--out", out), "supports --bits 4"),
        (("quantize", model, "-m", "rtn", "--group-size", "100", "--out", out), "does not divide the input"),
        (("quantize", broken, "--method", "rtn", "--out", out), "NaN or Inf"),
        (("quantize", rtn, "--method", "gptq", "--out", out), "already quantized (gptq)"),
        (("quantize", model, "-m", "gptq", "--calib", tiny, "--out", out), "fewer than 128 windows"),
    ]  # fmt: skip
    for argv, fragment in cases:
        code, _, err = run_cli("-q", *argv)
        assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_unquantized_tensors_are_stored_in_float16_unless_kept(demo, tmp_path):
    """Embeddings, lm_head and norms of a float32 source go to float16 (as GPTQ/AWQ checkpoints
    keep them); `keep_dtype` keeps float32. Packed tensors are the same either way."""
    dtypes = {}
    for keep in (False, True):
        out = compress.quantize(demo[0], tmp_path / f"keep-{keep}", method="rtn", bits=4, keep_dtype=keep)
        tensors = load_file(out / "model.safetensors")
        dtypes[keep] = {name: tensor.dtype for name, tensor in tensors.items()}
        assert read_manifest(out).parameters["keep_dtype"] is keep
    assert dtypes[False]["model.embed_tokens.weight"] == torch.float16
    assert dtypes[False]["model.norm.weight"] == torch.float16
    assert dtypes[False]["model.layers.0.input_layernorm.weight"] == torch.float16
    assert dtypes[True]["model.embed_tokens.weight"] == torch.float32
    packed = [name for name in dtypes[True] if name.endswith((".qweight", ".scales"))]
    assert packed and all(dtypes[False][name] == dtypes[True][name] for name in packed)
    assert (
        describe(tmp_path / "keep-False")["bits_per_weight"]
        < describe(tmp_path / "keep-True")["bits_per_weight"]
    )


def test_default_calibration_count_takes_what_a_short_text_holds(demo, tmp_path, run_cli):
    """No --calib-samples: 128 windows, or every full window of a shorter text, with a notice;
    an explicit count the text cannot fill is still an error."""
    text = tmp_path / "short.txt"
    text.write_text("\n\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(60)))
    code, _, err = run_cli(
        "quantize", demo[0], "-m", "gptq", "--calib", text, "--seq-len", "64", "--out", tmp_path / "a"
    )
    assert code == 0, err
    assert "of the default 128 windows of 64 tokens" in err and "calibrating on those" in err
    calibration = read_manifest(tmp_path / "a").calibration
    assert 1 <= calibration["samples"] < 128 and calibration["seq_len"] == 64
    code, _, err = run_cli(
        "-q", "quantize", demo[0], "-m", "gptq", "--calib", text, "--seq-len", "64",
        "--calib-samples", "128", "--out", tmp_path / "b",
    )  # fmt: skip
    assert_one_line_error(code, err, "fewer than 128 windows of 64 tokens")
    assert not (tmp_path / "b").exists()


# --- issue 26: an option the method does not use is refused, not recorded and ignored ----------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"method": "rtn", "group_fallback": True}, "--group-fallback only changes an explicit --group-size"),
        ({"method": "gptq", "group_size": -1, "group_fallback": True}, "is -1 (whole rows)"),
        ({"method": "rtn", "act_order": True}, "--act-order has no effect with --method rtn"),
        ({"method": "awq", "act_order": False}, "--act-order has no effect with --method awq"),
        ({"method": "fp16", "calib": CALIBRATION}, "--calib has no effect with --method fp16"),
        ({"method": "int8", "calib_samples": 8}, "--calib-samples has no effect"),
        ({"method": "rtn", "calib_dtype": "float32"}, "--calib-dtype has no effect"),
        ({"method": "nf4", "seq_len": 256}, "--seq-len has no effect with --method nf4"),
        ({"method": "rtn", "seed": 1}, "--seed has no effect with --method rtn"),
        ({"method": "awq", "damp_percent": 0.05}, "--damp-percent has no effect with --method awq"),
        ({"method": "gptq", "double_quant": True}, "--double-quant has no effect with --method gptq"),
        ({"method": "int8", "compute_dtype": "float32"}, "--compute-dtype has no effect with --method int8"),
        ({"method": "fp4", "sym": False}, "--sym/--asym has no effect with --method fp4"),
        ({"method": "int8", "group_size": 64}, "--group-size has no effect with --method int8"),
        ({"method": "bf16", "keep_dtype": True}, "--keep-dtype has no effect with --method bf16"),
    ],
    ids=str,
)
def test_an_option_the_method_does_not_use_is_refused(options, fragment):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        QuantizeConfig(**options)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bits": 4},
        {"method": "gptq", "act_order": False, "damp_percent": 0.05, "calib_dtype": "float32", "seed": 2},
        {"method": "awq", "sym": True, "calib": CALIBRATION, "calib_samples": 8},
        {"method": "rtn", "group_size": 32, "group_fallback": True, "sym": False, "keep_dtype": True},
        {"method": "rtn", "seq_len": 256},  # the quality tests' shared helper does this
        {"method": "nf4", "double_quant": True, "compute_dtype": "float16"},
        {"method": "int8"},
    ],
    ids=str,
)
def test_options_a_method_uses_validate_and_survive_a_round_trip(options):
    """The CLI and recipes validate a config, then the library validates its dump again."""
    config = QuantizeConfig(**options)
    assert QuantizeConfig.model_validate(config.model_dump()) == config


def test_act_order_is_gptqs_default_and_no_other_methods_value():
    assert QuantizeConfig(method="gptq").act_order is True
    assert QuantizeConfig(bits=4).act_order is True  # --bits 4 is gptq
    assert QuantizeConfig(method="rtn").act_order is None
    assert QuantizeConfig(method="awq").act_order is None


def test_a_method_that_does_not_calibrate_records_calib_dtype_auto():
    """Resolving `auto` for rtn would record a dtype it never used, and one its own check refuses."""
    config = QuantizeConfig(method="rtn").for_device(torch.device("cpu"))
    assert config.calib_dtype == "auto"
    assert QuantizeConfig.model_validate(config.model_dump()) == config
    assert QuantizeConfig(method="gptq").for_device(torch.device("cpu")).calib_dtype in (
        "bfloat16",
        "float32",
    )
