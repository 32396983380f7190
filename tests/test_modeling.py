"""Model resolution, loading and data-driven block discovery on every supported architecture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, TINY_VOCAB, assert_one_line_error

from compress.errors import CompressError, UnsupportedArchitectureError
from compress.modeling import (
    count_parameters,
    discover_layout,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
)

# The linear layers each architecture's block must expose: (name, in_features, out_features).
# hidden 32, 4 query heads of 8, 2 KV heads, MLP 64 (GPT-2: 4 × hidden).
EXPECTED_LINEARS = {
    "llama": [
        ("self_attn.q_proj", 32, 32),
        ("self_attn.k_proj", 32, 16),
        ("self_attn.v_proj", 32, 16),
        ("self_attn.o_proj", 32, 32),
        ("mlp.gate_proj", 32, 64),
        ("mlp.up_proj", 32, 64),
        ("mlp.down_proj", 64, 32),
    ],
    "phi3": [
        ("self_attn.o_proj", 32, 32),
        ("self_attn.qkv_proj", 32, 64),
        ("mlp.gate_up_proj", 32, 128),
        ("mlp.down_proj", 64, 32),
    ],
    "gpt2": [
        ("attn.c_attn", 32, 96),
        ("attn.c_proj", 32, 32),
        ("mlp.c_fc", 32, 128),
        ("mlp.c_proj", 128, 32),
    ],
    "opt": [
        ("self_attn.k_proj", 32, 32),
        ("self_attn.v_proj", 32, 32),
        ("self_attn.q_proj", 32, 32),
        ("self_attn.out_proj", 32, 32),
        ("fc1", 32, 64),
        ("fc2", 64, 32),
    ],
}
for same_as_llama in ("mistral", "qwen2", "qwen3", "gemma"):
    EXPECTED_LINEARS[same_as_llama] = EXPECTED_LINEARS["llama"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_block_discovery(architecture, tiny_model_dir):
    model = load_model(resolve_model(tiny_model_dir(architecture)), device="cpu")
    layout = discover_layout(model)

    assert len(layout.blocks) == 2
    found = {(layer.name, layer.in_features, layer.out_features) for layer in layout.linear_layers(1)}
    assert found == set(EXPECTED_LINEARS[architecture])
    assert layout.embeddings.weight.shape[0] == TINY_VOCAB
    assert layout.lm_head is not None and layout.lm_head.weight.shape[0] == TINY_VOCAB
    assert layout.final_norm is not None and "norm" in type(layout.final_norm).__name__.lower()
    # The matrix shape a quantizer sees is [out, in], whatever the storage (GPT-2 stores [in, out]).
    for layer in layout.linear_layers(0):
        weight = layer.module.weight.T if layer.transposed else layer.module.weight
        assert tuple(weight.shape) == (layer.out_features, layer.in_features)
    assert all(layer.transposed for layer in layout.linear_layers(0)) == (architecture == "gpt2")


def test_layout_follows_the_module_tree_not_names(tiny_model_dir):
    """Blocks are found by shape of the tree: the path differs per architecture."""
    paths = {
        arch: discover_layout(load_model(resolve_model(tiny_model_dir(arch)), device="cpu")).blocks_path
        for arch in ("llama", "gpt2", "opt")
    }
    assert paths == {"llama": "model.layers", "gpt2": "transformer.h", "opt": "model.decoder.layers"}


def test_model_source_fingerprint_and_lineage(tiny_model_dir):
    source = resolve_model(tiny_model_dir("llama"))
    assert len(source.sha256) == 64
    assert resolve_model(tiny_model_dir("llama")).sha256 == source.sha256
    assert source.sha256 != resolve_model(tiny_model_dir("qwen2")).sha256
    assert not source.is_artifact
    assert source.lineage()["sha256"] == source.sha256


def test_load_model_dtype_and_parameters(tiny_model_dir):
    source = resolve_model(tiny_model_dir("llama"))
    model = load_model(source, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_missing_path_is_a_clear_error():
    with pytest.raises(CompressError, match="does not exist"):
        resolve_model("/no/such/model")


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(CompressError, match="no config.json"):
        resolve_model(tmp_path)


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'bert'"):
        load_model(resolve_model(tmp_path), device="cpu")


def _forbid_heavy_work(monkeypatch) -> None:
    """Any weight download, GGUF dequantization or model load fails the test: a refusal must come first."""
    import transformers

    from compress import gguf_source

    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the architecture was checked")

    monkeypatch.setattr(gguf_source, "_convert", heavy)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", heavy)


def _unsupported_gguf(path):
    """A GGUF whose architecture transformers does not read as a causal LM."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _unsupported_hub_snapshot(cache, repo_id: str) -> None:
    """The local hub cache holding only a config.json (an encoder) and a weight file too big to fetch."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "bert", "is_decoder": False}))


@pytest.mark.parametrize("kind", ["directory", "gguf", "hub"])
def test_a_model_nobody_supports_is_refused_in_one_line_before_any_heavy_work(
    kind, run_cli, tmp_path, monkeypatch
):
    import huggingface_hub

    if kind == "directory":
        model = tmp_path / "encoder"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "bert", "is_decoder": False}))
    elif kind == "gguf":
        model = _unsupported_gguf(tmp_path / "encoder.gguf")
    else:
        model = "some-org/an-encoder"
        _unsupported_hub_snapshot(tmp_path / "hub", model)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _forbid_heavy_work(monkeypatch)
    code, _, err = run_cli("quantize", model, "--bits", "4", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "bert")
    assert not (tmp_path / "out").exists()


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(CompressError, match="not in the local Hugging Face cache"):
        resolve_model("some-org/some-model-that-is-not-cached")


def test_invalid_hub_id_is_a_clear_error():
    with pytest.raises(CompressError, match="neither an existing directory nor a valid hub model id"):
        resolve_model("not a valid id!")


def test_devices_and_dtypes():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CompressError, match="unknown device"):
        resolve_device("abacus")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(CompressError, match="unknown dtype"):
        resolve_dtype("float8")
