"""Artifacts: atomic writes, manifests, lineage, and the fp16/bf16 cast through the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import compress
from compress.artifact import Manifest, describe, read_manifest
from compress.errors import CompressError
from compress.modeling import MANIFEST_NAME
from compress.staging import staged_directory

MANIFEST_FIELDS = set(Manifest.model_fields)


def test_exception_mid_save_leaves_no_artifact(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(RuntimeError, match="disk on fire"), staged_directory(out) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"half a file")
        raise RuntimeError("disk on fire")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staging_without_manifest_is_never_published(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(RuntimeError, match="without its compress.json"), staged_directory(out) as staging:
        (staging / "config.json").write_text("{}")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_and_force_replaces(tmp_path):
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(CompressError, match="already exists; pass --force"), staged_directory(out):
        pass
    with pytest.raises(CompressError, match="did not write"), staged_directory(out, force=True):
        pass  # the user's folder: not ours to replace
    (out / MANIFEST_NAME).write_text(json.dumps({"tool": {"name": "compress"}}))  # an artifact of ours
    with staged_directory(out, force=True) as staging:
        (staging / MANIFEST_NAME).write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


@pytest.mark.parametrize(("method", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cast_writes_a_complete_artifact(tmp_path, tiny_model_dir, method, dtype):
    from transformers import AutoModelForCausalLM

    source = tiny_model_dir("qwen2")
    out = compress.quantize(source, tmp_path / method, method=method, device="cpu", command="test")

    manifest = read_manifest(out)
    dumped = manifest.model_dump()
    assert set(dumped) == MANIFEST_FIELDS
    assert manifest.method == method and manifest.parameters["bits"] == 16
    assert manifest.lineage.source["sha256"] == compress.resolve_model(source).sha256
    assert manifest.lineage.parent is None
    assert [phase["name"] for phase in manifest.phases] == ["load_and_cast", "save"]
    assert all(phase["wall_s"] >= 0 and phase["peak_rss_bytes"] > 0 for phase in manifest.phases)
    assert manifest.libraries["torch"] and manifest.libraries["transformers"]
    assert manifest.device["type"] == "cpu"
    assert manifest.model["parameters"] > 0
    assert len(manifest.sha256) == 64
    assert (out / "README.md").read_text().count(method) >= 1
    assert (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin")) and not list(tmp_path.glob("*.tmp-*"))

    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {dtype}
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == dtype

    info = describe(out)
    assert info["is_artifact"] and info["parameters"] == manifest.model["parameters"]
    assert info["bits_per_weight"] == pytest.approx(16, rel=0.02)


def test_artifact_of_an_artifact_records_its_parent(tmp_path, tiny_model_dir):
    first = compress.quantize(tiny_model_dir("llama"), tmp_path / "bf16", method="bf16", device="cpu")
    second = compress.quantize(first, tmp_path / "fp16", method="fp16", device="cpu")
    lineage = read_manifest(second).lineage
    assert lineage.parent["method"] == "bf16"
    assert lineage.parent["sha256"] == read_manifest(first).sha256
    assert lineage.source == read_manifest(first).lineage.source


def test_failure_during_save_leaves_no_artifact(tmp_path, tiny_model_dir, monkeypatch):
    import compress.quantize.runner as runner

    def broken_save(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(runner, "save_model_files", broken_save)
    with pytest.raises(OSError, match="no space left"):
        compress.quantize(tiny_model_dir("llama"), tmp_path / "out", method="fp16", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_output_equal_to_input_is_refused(tiny_model_dir):
    source = tiny_model_dir("llama")
    with pytest.raises(CompressError, match="is the input"):
        compress.quantize(source, source, method="fp16", force=True, device="cpu")


def test_already_quantized_model_is_refused(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "gptq-model"
    model_dir.mkdir()
    config = json.loads((tiny_model_dir("llama") / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressError, match=r"already quantized \(gptq\)"):
        compress.quantize(model_dir, tmp_path / "out", method="fp16", device="cpu")


def test_weights_that_overflow_fp16_are_refused(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "huge"
    model_dir.mkdir()
    source = tiny_model_dir("llama")
    (model_dir / "config.json").write_text((source / "config.json").read_text())
    weights = load_file(source / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], 1e6)
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CompressError, match="NaN or Inf values after the fp16 cast"):
        compress.quantize(model_dir, tmp_path / "out", method="fp16", device="cpu")
    assert not (tmp_path / "out").exists()
    # bf16 has fp32's range, so the same model casts fine.
    compress.quantize(model_dir, tmp_path / "out", method="bf16", device="cpu")


def test_bits_choose_the_method_and_reject_what_does_not_exist(tmp_path, tiny_model_dir):
    out = compress.quantize(tiny_model_dir("llama"), tmp_path / "out", bits=16, device="cpu")
    assert read_manifest(out).method == "fp16"
    with pytest.raises(CompressError, match="no quantization method for --bits 1"):
        compress.quantize(tiny_model_dir("llama"), tmp_path / "x", bits=1)
    with pytest.raises(CompressError, match="supports --bits 16, not 8"):
        compress.quantize(tiny_model_dir("llama"), tmp_path / "x", method="bf16", bits=8)
