"""bitsandbytes int8 / NF4 / FP4: artifacts that reload exactly, with the quality each should have."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from compress.data import sequential_windows
from compress.errors import CompressError
from compress.evaluate.divergence import kl_divergence
from compress.modeling import count_parameters, load_model, load_tokenizer, resolve_model
from compress.quantize.bnb import (
    bnb_config,
    bnb_parameter_count,
    load_bnb_for_eval,
    load_bnb_quantized,
    save_bnb,
)

#: (method, double quantization), named as the tests report them.
VARIANTS = {"int8": ("int8", False), "nf4": ("nf4", False), "fp4": ("fp4", False), "nf4-dq": ("nf4", True)}


def _log_probs(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities [positions, vocab] in fp32, the harness's view of a model."""
    with torch.no_grad():
        logits = torch.cat([model(windows[i : i + 8]).logits for i in range(0, len(windows), 8)])
    return torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])


@pytest.fixture(scope="module")
def heldout(demo) -> torch.Tensor:
    """32 held-out windows of 128 tokens: code the demo model never trained on."""
    tokenizer = load_tokenizer(resolve_model(demo[0]))
    return sequential_windows(tokenizer, "builtin:python-stdlib:heldout", 128, max_tokens=4096).input_ids


@pytest.fixture(scope="module")
def baseline_log_probs(demo, heldout) -> torch.Tensor:
    return _log_probs(load_model(resolve_model(demo[0]), "float32", "cpu"), heldout)


@pytest.fixture(scope="module")
def artifacts(demo, heldout, tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    """Each variant saved, then scored fresh: saved before any forward, as the pitfall requires."""
    source = resolve_model(demo[0])
    made = {}
    for name, (method, double_quant) in VARIANTS.items():
        model = load_bnb_quantized(source, method, double_quant, "bfloat16", "cpu")
        path = tmp_path_factory.mktemp(f"bnb-{name}")
        save_bnb(model, path)
        made[name] = (path, _log_probs(model, heldout))
    return made


@pytest.mark.parametrize("variant", VARIANTS)
def test_reloaded_artifact_matches_the_quantized_model(artifacts, heldout, variant):
    path, fresh = artifacts[variant]
    reloaded = load_bnb_for_eval(resolve_model(path), "cpu", "auto")
    assert torch.equal(_log_probs(reloaded, heldout), fresh)


@pytest.mark.parametrize("variant", VARIANTS)
def test_artifact_is_safetensors_with_quantization_config(artifacts, variant):
    path, _ = artifacts[variant]
    method, double_quant = VARIANTS[variant]
    weights = [p.name for p in path.iterdir() if p.suffix not in (".json",)]
    assert weights == ["model.safetensors"]
    quantization = json.loads((path / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == "bitsandbytes"
    if method == "int8":
        assert quantization["load_in_8bit"] and not quantization["load_in_4bit"]
    else:
        assert quantization["load_in_4bit"]
        assert quantization["bnb_4bit_quant_type"] == method
        assert quantization["bnb_4bit_use_double_quant"] == double_quant


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_is_the_source_models(artifacts, demo, variant):
    path, _ = artifacts[variant]
    source_parameters = count_parameters(load_model(resolve_model(demo[0]), "float32", "cpu"))
    assert bnb_parameter_count(path) == source_parameters


def test_parameter_count_of_tied_conv1d_model(tiny_model_dir, tmp_path):
    """GPT-2: Conv1D layers become bnb linears, and the tied head is stored once."""
    source = resolve_model(tiny_model_dir("gpt2"))
    save_bnb(load_bnb_quantized(source, "nf4", True, "bfloat16", "cpu"), tmp_path)
    assert bnb_parameter_count(tmp_path) == count_parameters(load_model(source, "float32", "cpu"))


def _mean_kld(baseline: torch.Tensor, log_probs: torch.Tensor) -> float:
    return kl_divergence(baseline, log_probs).mean().item()


@pytest.mark.quality
def test_int8_is_nearly_lossless(artifacts, baseline_log_probs, record_property):
    kld = _mean_kld(baseline_log_probs, artifacts["int8"][1])
    record_property("kld", kld)
    assert kld <= 0.01


@pytest.mark.quality
def test_nf4_beats_fp4_and_both_lose_more_than_int8(artifacts, baseline_log_probs, record_property):
    kld = {name: _mean_kld(baseline_log_probs, artifacts[name][1]) for name in ("int8", "nf4", "fp4")}
    record_property("kld", kld)
    assert kld["int8"] < kld["nf4"] < kld["fp4"], kld


def test_reloaded_4bit_linears_skip_the_cpu_repack(artifacts):
    """Width 344 is not a multiple of 32: the CPU fast path would crash on it (see disable_cpu_repack)."""
    from bitsandbytes.nn import Linear4bit

    model = load_bnb_for_eval(resolve_model(artifacts["nf4"][0]), "cpu", "auto")
    linears = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert linears
    assert not any(m.support_avx512bf16_for_cpu for m in linears)


def test_int8_forward_does_not_log_per_matmul(artifacts, heldout, caplog):
    model = load_bnb_for_eval(resolve_model(artifacts["int8"][0]), "cpu", "auto")
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(heldout[:1])
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


def test_save_refuses_weights_repacked_by_a_forward(demo, tmp_path):
    model = load_bnb_quantized(resolve_model(demo[0]), "nf4", False, "bfloat16", "cpu")
    model.model.layers[0].mlp.down_proj.weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(RuntimeError, match="repacked"):
        save_bnb(model, tmp_path / "out")


@pytest.mark.parametrize(
    ("method", "double_quant", "compute_dtype", "message"),
    [
        ("int4", False, "bfloat16", "unknown bitsandbytes method"),
        ("int8", True, "bfloat16", "double quantization"),
        ("nf4", False, "int8", "unknown compute dtype"),
    ],
)
def test_bad_options_are_one_sentence_errors(method, double_quant, compute_dtype, message):
    with pytest.raises(CompressError, match=message):
        bnb_config(method, double_quant, compute_dtype)
