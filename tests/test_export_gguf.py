"""`compress export gguf` and llama.cpp as a runtime: exact where the formats allow it, refused in one
line where they do not. llama.cpp itself (`make llama-cpp`) is optional on a developer's machine;
CI builds it and sets COMPRESS_REQUIRE_LLAMA_CPP=1, which turns its absence into a failure."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import STORIES_MODEL, TINYSTORIES_TEXT, assert_one_line_error

from compress import llamacpp
from compress.artifact import read_manifest
from compress.modeling import resolve_model

#: Models beyond stories260K: the demo model trains (once per cache) and SmolLM2 is 135M parameters,
#: so their cases stay out of the fast tier.
TRAINED = pytest.param("demo", marks=pytest.mark.slow)
REAL = pytest.param("smollm2", marks=pytest.mark.slow)


def _gguf(directory):
    (found,) = directory.glob("*.gguf")
    return found


def _export(run_cli, model, out, *options):
    code, _, err = run_cli("export", "gguf", model, "--out", out, *options)
    assert code == 0, err
    return _gguf(out)


def _held_out_lines(count: int = 300) -> list[str]:
    lines = [line.strip() for line in TINYSTORIES_TEXT.read_text().splitlines()]
    return [line for line in lines if line][-count:]


@pytest.mark.parametrize("which", ["stories260K", TRAINED])
def test_f32_gguf_runs_in_llama_cpp_with_transformers_logits(which, request, llama_cpp, run_cli, tmp_path):
    """F32 weights, F32 KV cache, no flash attention: llama.cpp computes what transformers does."""
    from transformers import AutoModelForCausalLM

    model_dir = _model_dir(which, request)
    gguf = _export(run_cli, model_dir, tmp_path / "f32", "--type", "f32")
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    runtime = llamacpp.LlamaCppCausalLM(gguf, reference.config, threads=1, kv_type="f32")
    ids = torch.randint(0, reference.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(ids).logits
    assert (runtime(ids).logits - expected).abs().max() < 1e-4
    step = runtime(ids[:1, :64], use_cache=True)  # the decode path continues the same sequence
    following = runtime(ids[:1, 64:65], cache=step.cache, use_cache=True)
    assert (following.logits[0, -1] - expected[0, 64]).abs().max() < 1e-4


def test_transformers_reads_the_exported_file_back_exactly(run_cli, tmp_path):
    """The q/k rotary permutation and the metadata round-trip: transformers' GGUF reader undoes them."""
    from transformers import AutoModelForCausalLM

    gguf = _export(run_cli, STORIES_MODEL, tmp_path / "f32", "--type", "f32")
    original = AutoModelForCausalLM.from_pretrained(STORIES_MODEL, dtype=torch.float32).eval()
    reread = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(original(ids).logits, reread.eval()(ids).logits)


def _model_dir(which: str, request):
    if which == "stories260K":
        return STORIES_MODEL
    return request.getfixturevalue("demo")[0] if which == "demo" else request.getfixturevalue("smollm2")


@pytest.mark.parametrize("which", ["stories260K", TRAINED, REAL])
def test_llama_cpp_tokenizes_held_out_text_as_transformers_does(which, request, llama_cpp, run_cli, tmp_path):
    """stories260K is a SentencePiece-style vocabulary (scores from merge ranks), the demo model and
    SmolLM2 byte-level BPEs (`gpt-2` pre-tokenizer): 300 held-out lines each, identical ids."""
    from transformers import AutoTokenizer

    model_dir = _model_dir(which, request)
    gguf = _export(run_cli, model_dir, tmp_path / "f16", "--type", "f16")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for line in _held_out_lines():
        expected = tokenizer.encode(line, add_special_tokens=False)
        assert vocab.tokenize(line.encode(), add_bos=False, special=False) == expected, line


def _tiny_llama_gptq(run_cli, tiny_model_dir, out, *options):
    code, _, err = run_cli(
        "quantize", tiny_model_dir("llama"), "-m", "gptq", "--bits", "4", "--group-size", "32",
        "--calib", TINYSTORIES_TEXT, "--calib-samples", "8", "--seq-len", "64", "--out", out, *options,
    )  # fmt: skip
    assert code == 0, err
    return out


def _unpermuted(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows back in transformers' order."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def test_gptq_to_q4_0_carries_our_integers_exactly(llama_cpp, run_cli, tiny_model_dir, tmp_path):
    """Decoded by the `gguf` package's reader (not our code), every block linear of the exported
    file is exactly the weight GPTQ chose; llama.cpp's quantizer copied them without rounding."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from compress.quantize.packed import load_packed
    from compress.quantize.qlinear import QuantLinear

    artifact = _tiny_llama_gptq(run_cli, tiny_model_dir, tmp_path / "gptq", "--sym")
    gguf = _export(run_cli, artifact, tmp_path / "q4_0", "--type", "q4_0")
    packed = load_packed(resolve_model(artifact), "cpu", "float32")
    ours = {
        name: module.quantized_weight().dequantize().numpy()
        for name, module in packed.named_modules()
        if isinstance(module, QuantLinear)
    }
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    short |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    tensors = {t.name: t for t in GGUFReader(gguf).tensors}
    config = packed.config
    for name, weight in ours.items():
        layer, kind = name.split(".")[2], name.split(".")[-1]
        tensor = tensors[f"blk.{layer}.{short[kind]}.weight"]
        assert tensor.tensor_type.name == "Q4_0"
        decoded = dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        if kind in ("q_proj", "k_proj"):
            heads = config.num_attention_heads if kind == "q_proj" else config.num_key_value_heads
            decoded = _unpermuted(decoded, heads)
        assert np.array_equal(decoded, weight), name
    manifest = read_manifest(gguf.parent)
    assert manifest.extra["lossless_tensors"] == len(ours) == 14
    assert manifest.lineage.parent["method"] == "gptq"
    code, out, _ = run_cli("--json", "inspect", gguf.parent)  # sizes read from the file's header
    info = json.loads(out)
    assert code == 0 and info["model_type"] == "gguf" and info["parameters_by_dtype"]["Q4_0"] > 0


def test_a_grid_that_no_block_type_holds_is_refused(llama_cpp, run_cli, tiny_model_dir, tmp_path):
    artifact = _tiny_llama_gptq(run_cli, tiny_model_dir, tmp_path / "asym", "--asym")
    code, _, err = run_cli("export", "gguf", artifact, "--type", "q4_0", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "asymmetric", "does not hold exactly", "--sym --group-size 32")
    code, _, err = run_cli("export", "gguf", artifact, "--type", "q4_k_m", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "without rounding its weights again", "q4_0")
    assert not (tmp_path / "x").exists()


def test_refusals_are_one_line(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    qwen2 = tiny_model_dir("qwen2")
    code, _, err = run_cli("export", "gguf", qwen2, "--type", "f16", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "supports the llama architecture", "qwen2")
    code, _, err = run_cli("export", "gguf", STORIES_MODEL, "--type", "q3", "--out", tmp_path / "b")
    assert code == 2 and "unknown GGUF type 'q3'" in err
    code, _, err = run_cli("export", "gguf", STORIES_MODEL, "--out", tmp_path / "c.gguf")
    assert_one_line_error(code, err, "--out names the artifact directory", str(tmp_path / "c"))
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if it were not built
    code, _, err = run_cli("export", "gguf", STORIES_MODEL, "--type", "q4_0", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "llama.cpp is not available", "make llama-cpp")
    assert not any(tmp_path.iterdir())


def test_eval_scores_a_gguf_in_llama_cpp_beside_torch_artifacts(llama_cpp, run_cli, tmp_path):
    """The harness runs the file in llama.cpp and records how; an F32 export matches the baseline."""
    artifact = tmp_path / "q8"
    _export(run_cli, STORIES_MODEL, tmp_path / "f32", "--type", "f32")
    _export(run_cli, STORIES_MODEL, artifact, "--type", "q8_0")
    report = tmp_path / "report.json"
    code, _, err = run_cli(
        "eval", tmp_path / "f32", artifact, "--baseline", STORIES_MODEL, "--suite", "quick",
        "--data", TINYSTORIES_TEXT, "--seq-len", "128", "--max-tokens", "4096",
        "--metrics", "ppl,kld,size", "--json", report,
    )  # fmt: skip
    assert code == 0, err
    f32, q8 = json.loads(report.read_text())["results"]
    assert f32["runtime"]["runtime"] == "llama.cpp" and f32["format"] == "gguf"
    assert f32["metrics"]["kld"]["mean"] < 1e-4  # only llama.cpp's f16 KV cache differs
    assert 1e-4 < q8["metrics"]["kld"]["mean"] < 5e-3 and q8["method"] == "gguf-q8_0"
    assert q8["metrics"]["size"]["bits_per_weight"] < 12
    assert (artifact / "eval.json").is_file()  # stored beside the file, in the export's artifact


def test_a_recipe_can_end_in_a_gguf(llama_cpp, run_cli, tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: to-gguf
        model: {tiny_model_dir("llama")}
        data:
          calib: {{source: "{TINYSTORIES_TEXT}", samples: 8, seq_len: 64}}
          eval: {{source: "{TINYSTORIES_TEXT}", seq_len: 64, max_tokens: 512}}
        stages:
          - {{name: int4, quantize: {{method: gptq, bits: 4, group_size: 32, sym: true}}}}
          - {{name: gguf, export: {{type: q4_0}}}}
        eval:
          suite: quick
          metrics: [ppl, kld, size]
        """)
    )
    code, _, err = run_cli("run", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "run" / "gguf")
    assert manifest.method == "gguf-q4_0" and manifest.extra["lossless_tensors"] == 14
    assert manifest.lineage.parent["method"] == "gptq"


def test_widths_no_block_divides_follow_llama_cpps_own_fallback(llama_cpp, run_cli, tmp_path):
    """stories260K's MLP is 172 wide: an explicit --group-size 32 refuses it unless the per-layer
    fallback is asked for by name; exported, those layers go as floats (F16 after llama.cpp, as it
    does for that layer of any model) and the other 30 linears as our exact Q4_0 blocks."""
    out = tmp_path / "rtn"
    base = ("quantize", STORIES_MODEL, "-m", "rtn", "--bits", "4", "--sym", "--group-size", "32")
    code, _, err = run_cli(*base, "--out", out)
    assert_one_line_error(code, err, "does not divide the input width 172", "--group-fallback")
    assert run_cli(*base, "--group-fallback", "--out", out)[0] == 0
    gguf = _export(run_cli, out, tmp_path / "q4_0", "--type", "q4_0")
    manifest = read_manifest(gguf.parent)
    assert manifest.extra["lossless_tensors"] == 30
    assert manifest.extra["tensor_types"]["F16"] == 5 and manifest.extra["tensor_types"]["Q4_0"] == 30


@pytest.mark.slow
def test_an_importance_matrix_from_our_calibration_improves_llama_cpps_k_quants(llama_cpp, run_cli, tmp_path):
    """`--calib` gives llama.cpp's quantizer the mean x² of every block linear's inputs (what its
    imatrix tool records): stories260K's Q4_K_M KLD drops 18% here (0.0149 → 0.0121)."""
    lines = TINYSTORIES_TEXT.read_text().splitlines()
    calib, heldout = tmp_path / "calib.txt", tmp_path / "heldout.txt"
    calib.write_text("\n".join(lines[len(lines) // 2 :]))
    heldout.write_text("\n".join(lines[: len(lines) // 2]))
    plain = _export(run_cli, STORIES_MODEL, tmp_path / "plain", "--type", "q4_k_m")
    weighted = _export(
        run_cli,
        STORIES_MODEL,
        tmp_path / "imatrix",
        "--type",
        "q4_k_m",
        "--calib",
        calib,
        "--calib-samples",
        "32",
    )
    manifest = read_manifest(weighted.parent)
    assert manifest.extra["importance_matrix"] and manifest.calibration["sha256"]
    report = tmp_path / "report.json"
    code, _, err = run_cli(
        "eval", plain.parent, weighted.parent, "--baseline", STORIES_MODEL, "--suite", "quick",
        "--data", heldout, "--seq-len", "256", "--max-tokens", "8192", "--metrics", "kld", "--json", report,
    )  # fmt: skip
    assert code == 0, err
    without, with_imatrix = (r["metrics"]["kld"]["mean"] for r in json.loads(report.read_text())["results"])
    assert with_imatrix < 0.95 * without


# --- what llama.cpp would not run as the source does, and options that would do nothing ----------


def _tiny_llama(tmp_path, tokenizer_dir, name: str, **overrides):
    """A random tiny Llama (conftest's shape) with `overrides` in its config, and the 300-token
    tokenizer whatever its embedding's row count."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    shape |= dict(num_key_value_heads=2, max_position_embeddings=128, vocab_size=300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**(shape | overrides)))
    path = tmp_path / name
    model.save_pretrained(path)
    for file in tokenizer_dir.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    return path


def _refused_before_loading(monkeypatch) -> None:
    """Make any weight load a test failure: the refusals below come from the config files alone."""
    import compress.export.runner

    def never(*_args, **_kwargs):
        raise AssertionError("loaded the weights of a model the config files already refuse")

    monkeypatch.setattr(compress.export.runner, "_load", never)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_a_llama_whose_mlp_is_not_silu_is_refused(
    activation, run_cli, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    """llama.cpp's `llama` graph hard-codes SiLU: a GELU Llama would run, silently, as another model."""
    model = _tiny_llama(tmp_path, tiny_tokenizer_dir, activation, hidden_act=activation)
    _refused_before_loading(monkeypatch)
    code, _, err = run_cli("export", "gguf", model, "--type", "f16", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "SiLU", f"'{activation}'")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_longer_than_the_embedding_is_refused(run_cli, tiny_tokenizer_dir, tmp_path, monkeypatch):
    """300 tokens over 256 embedding rows: llama.cpp sizes token_embd from the token list and
    refuses the file ("wrong shape"), and tokens 256… have no embedding anyway."""
    model = _tiny_llama(tmp_path, tiny_tokenizer_dir, "short", vocab_size=256)
    _refused_before_loading(monkeypatch)
    code, _, err = run_cli("export", "gguf", model, "--type", "f16", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "44 token(s) at ids past the model's 256 embedding rows", "= 256")
    assert not (tmp_path / "out").exists()


def test_llama_cpp_loads_a_padded_vocabulary_and_refuses_a_longer_one(
    llama_cpp, tiny_tokenizer_dir, tmp_path
):
    """Why the line is drawn where it is: a token list padded to the embedding's 320 rows loads and
    runs as transformers does, while one longer than the embedding (written here past our own
    check) is a file llama.cpp will not load."""
    from transformers import AutoModelForCausalLM

    from compress.export import vocab as vocab_module
    from compress.export.runner import export_gguf
    from compress.export.writer import write_gguf

    padded = _tiny_llama(tmp_path, tiny_tokenizer_dir, "padded", vocab_size=320)
    gguf = _gguf(export_gguf(padded, tmp_path / "padded-f32", type="f32"))
    reference = AutoModelForCausalLM.from_pretrained(padded, dtype=torch.float32).eval()
    runtime = llamacpp.LlamaCppCausalLM(gguf, reference.config, threads=1, kv_type="f32")
    ids = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (runtime(ids).logits - reference(ids).logits).abs().max() < 1e-4
    short = _tiny_llama(tmp_path, tiny_tokenizer_dir, "short", vocab_size=256)
    model = AutoModelForCausalLM.from_pretrained(short, dtype=torch.float32)
    data = json.loads((short / "tokenizer.json").read_text())
    tokens = {index: text for text, index in data["model"]["vocab"].items()}
    tokens |= {added["id"]: added["content"] for added in data["added_tokens"]}
    vocab = vocab_module.read_vocab(padded, 300)  # every one of the 300 tokens
    assert len(vocab.tokens) == 300 and vocab.tokens == [tokens[i] for i in range(300)]
    bad = tmp_path / "longer.gguf"
    write_gguf(model, vocab, bad, float_type="F32", lossless=None, file_type=0, name="longer")
    with pytest.raises(Exception):  # noqa: B017 - the binding raises ValueError, versions differ
        llama_cpp.Llama(model_path=str(bad), verbose=False)


CALIBRATION_REFUSALS = {
    "calib with a float type": (("--type", "f16", "--calib", TINYSTORIES_TEXT), "--calib", "--type f16"),
    "threads with a float type": (("--type", "f32", "--threads", "2"), "--threads", "--type f32"),
    "seq-len without calib": (("--type", "bf16", "--seq-len", "128"), "--seq-len", "without --calib"),
    "seed without calib": (("--type", "q8_0", "--seed", "3"), "--seed", "without --calib"),
    "calib-samples without calib": (("--type", "q4_k_m", "--calib-samples", "8"), "--calib-samples"),
}


@pytest.mark.parametrize("case", CALIBRATION_REFUSALS)
def test_options_that_would_do_nothing_are_refused(case, run_cli, tmp_path):
    options, *fragments = CALIBRATION_REFUSALS[case]
    code, _, err = run_cli("export", "gguf", STORIES_MODEL, *options, "--out", tmp_path / "out")
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out").exists()


def test_calib_for_a_packed_artifact_is_refused(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    """A packed artifact's Q4_0 blocks go over as they are, so no importance matrix is ever read."""
    artifact = tmp_path / "rtn"
    code, _, err = run_cli(
        "quantize", tiny_model_dir("llama"), "-m", "rtn", "--bits", "4", "--sym", "--group-size", "32",
        "--out", artifact,
    )  # fmt: skip
    assert code == 0, err
    _refused_before_loading(monkeypatch)
    code, _, err = run_cli(
        "export", "gguf", artifact, "--type", "q4_0", "--calib", TINYSTORIES_TEXT, "--out", tmp_path / "out"
    )
    assert_one_line_error(code, err, "--calib", "packed artifact's q4_0 blocks")
    assert not (tmp_path / "out").exists()


def test_a_recipes_calibration_reaches_only_export_stages_that_read_it():
    """A recipe's `data.calib` is offered to every stage: an export to a float type takes none of it
    (it would refuse it), one that runs llama.cpp's quantizer takes all of it."""
    from compress.export.config import ExportConfig
    from compress.export.technique import EXPORT
    from compress.technique import RecipeData

    data = RecipeData(calib="text.txt", samples=8, seq_len=64, seed=1)
    as_f16 = EXPORT.stage_options(ExportConfig(type="f16"), data)
    assert (as_f16.calib, as_f16.calib_samples, as_f16.seq_len, as_f16.seed) == (None, None, None, None)
    as_q4 = EXPORT.stage_options(ExportConfig(type="q4_k_m"), data)
    assert (as_q4.calib, as_q4.calib_samples, as_q4.seq_len, as_q4.seed) == ("text.txt", 8, 64, 1)
    assert ExportConfig(type="q4_k_m", calib="t.txt").seq_len == 512  # the default, once calib is given
    assert EXPORT.stage_options(ExportConfig(type="q4_k_m"), RecipeData()).calib is None


def test_a_quiet_export_prints_nothing_on_stderr(llama_cpp, tmp_path, capfd):
    """llama.cpp's C code logs to stderr itself (quantizer and loader warnings); without --verbose
    none of it gets through, so --quiet prints the artifact's path and nothing else."""
    from compress import cli, console

    out = tmp_path / "q4"
    try:
        code = cli.main(
            ["--quiet", "export", "gguf", str(STORIES_MODEL), "--type", "q4_k_m", "--out", str(out)]
        )
    finally:
        console.mode.quiet = False
        __import__("logging").disable(__import__("logging").NOTSET)
    captured = capfd.readouterr()
    assert code == 0 and captured.out.strip() == str(out)
    assert captured.err == ""
    _gguf(out)


def test_inspect_takes_one_gguf_and_refuses_a_folder_of_several(run_cli, tmp_path):
    """`inspect` reads a folder as a model source does: one .gguf is described, several are one line
    asking for one of them, and a .gguf file itself can be inspected."""
    first = _export(run_cli, STORIES_MODEL, tmp_path / "f16", "--type", "f16")
    code, out, err = run_cli("--json", "inspect", first.parent)
    assert code == 0, err
    info = json.loads(out)
    assert info["is_artifact"] and info["weight_files"] == [first.name]
    second = first.parent / "copy.gguf"
    second.write_bytes(first.read_bytes())
    code, _, err = run_cli("inspect", first.parent)
    assert_one_line_error(code, err, "holds several GGUF files", "copy.gguf", "f16.gguf", "pass one of them")
    code, out, err = run_cli("--json", "inspect", second)
    info = json.loads(out)
    assert code == 0 and info["path"] == str(second) and not info["is_artifact"]  # not the export's file
    assert info["disk_bytes"] == second.stat().st_size
    code, out, err = run_cli("--json", "inspect", first)
    assert code == 0 and json.loads(out)["is_artifact"]


def test_tokenizers_match_across_a_gguf_vocabulary_padded_to_the_embedding(tiny_tokenizer_dir):
    """A GGUF holds one token per embedding row, so transformers reads a padded model's GGUF back
    with `[PAD300]`… placeholders the original tokenizer lacks; they are special, at ids it leaves
    empty, and tokenize nothing, so KLD stays comparable. Any other difference still counts."""
    from transformers import AutoTokenizer

    from compress.modeling import tokenizers_match

    original = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    padded = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    padded.add_special_tokens({"additional_special_tokens": [f"[PAD{i}]" for i in range(300, 320)]})
    probe = "def function_3(x):\n    return x * 3 + 3"
    assert tokenizers_match(original, padded, probe) and tokenizers_match(padded, original, probe)
    ordinary = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ordinary.add_tokens(["function_3"])  # an ordinary added token changes how text tokenizes
    assert not tokenizers_match(original, ordinary, probe)
    widened = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    widened.add_tokens(["zzz"])  # id 300 taken by an ordinary token: [PAD300] is no placeholder there
    assert not tokenizers_match(widened, padded, probe) and not tokenizers_match(padded, widened, probe)


def test_a_padded_vocabulary_gguf_is_scored_with_kld_every_time(run_cli, tiny_tokenizer_dir, tmp_path):
    """An embedding with 20 rows past its tokenizer exports with placeholder tokens; `eval` scores
    the GGUF's KLD against the original (it was skipped as "tokenizer differs"), on each run."""
    padded = _tiny_llama(tmp_path, tiny_tokenizer_dir, "padded", vocab_size=320)
    _export(run_cli, padded, tmp_path / "f32", "--type", "f32")
    for attempt in range(2):
        report = tmp_path / f"report{attempt}.json"
        code, _, err = run_cli(
            "eval", tmp_path / "f32", "--baseline", padded, "--suite", "quick", "--data", TINYSTORIES_TEXT,
            "--seq-len", "64", "--max-tokens", "1024", "--metrics", "ppl,kld", "--json", report,
        )  # fmt: skip
        assert code == 0, err
        (result,) = json.loads(report.read_text())["results"]
        assert not result.get("skipped") and result["metrics"]["kld"]["mean"] < 1e-3
