"""The family matrix: every dense decoder family users bring, through every technique (issue 27).

Each family is a tiny random model built from its own transformers config (tests/conftest.py), with
its special parts on: Gemma's `(1 + w)` norms, scaled embeddings and soft-capping, sliding-window
layers beside global ones with their own rotary tables, q/k norms, parallel attention and MLP,
fused qkv and gate/up projections, biases. Random weights say nothing about quality; what is proven
here is that every path runs, writes what it claims and reads back exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, MOE_FAMILIES, TINYSTORIES_TEXT, assert_one_line_error, round_block_linears

import compress
from compress.calibrate import capture_block_inputs
from compress.evaluate.loaders import load_for_eval
from compress.experts import unfuse_experts
from compress.modeling import discover_layout, load_model, resolve_model
from compress.prune.geometry import ARCHITECTURES as PRUNABLE

#: Small calibration and eval: the matrix runs every family in seconds.
CALIBRATION = {"calib_samples": 8, "seq_len": 32}
GROUP = 16


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(TINYSTORIES_TEXT.read_text()[:20000])
    return path


def _quantize_load_generate(source, calib_file, tmp_path, ids) -> None:
    """RTN, GPTQ and AWQ at 4 bits, each loaded on the runtime's kernels and dtype, generating."""
    for method in ("rtn", "gptq", "awq"):
        calibration = {} if method == "rtn" else {"calib": str(calib_file), **CALIBRATION}
        out = compress.quantize(
            source, tmp_path / method, method=method, bits=4, group_size=GROUP, device="cpu", **calibration
        )
        assert compress.read_manifest(out).method == method
        model = load_for_eval(resolve_model(out), "cpu", "auto")
        generated = model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert generated.shape == (1, ids.shape[1] + 4)
        with torch.inference_mode():
            assert torch.isfinite(model(input_ids=ids).logits).all()


def _reloads_as_rounded(artifact, reference, ids) -> None:
    """The RTN artifact, scored exactly, gives the logits of the source rounded in memory."""
    reloaded = load_for_eval(resolve_model(artifact), "cpu", "float32")
    expected = round_block_linears(reference, 4, GROUP)
    with torch.inference_mode():
        # Scales are stored in float16: 1e-3 of rounding; a mis-packed layer moves logits by O(1).
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=1e-3, atol=2e-3
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_family_quantizes_loads_generates_and_reloads_exactly(family, tiny_model_dir, calib_file, tmp_path):
    source = tiny_model_dir(family)
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    _quantize_load_generate(source, calib_file, tmp_path, ids)
    _reloads_as_rounded(tmp_path / "rtn", load_model(resolve_model(source), "float32", "cpu"), ids)


@pytest.mark.parametrize("family", FAMILIES + MOE_FAMILIES)
def test_family_evaluates_prunes_distills_and_runs_a_recipe(
    family, tiny_model_dir, run_cli, calib_file, tmp_path
):
    source = tiny_model_dir(family)
    fp16 = compress.quantize(source, tmp_path / "fp16", method="fp16", device="cpu")
    eval_args = ("--metrics", "ppl,kld,size", "--data", calib_file, "--seq-len", "32", "--max-tokens", "512")
    code, _, err = run_cli(
        "-q", "eval", fp16, "--baseline", source, *eval_args, "--json", tmp_path / "r.json"
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "r.json").read_text())["results"][0]["metrics"]
    assert metrics["ppl"]["value"] > 0 and metrics["kld"]["mean"] < 0.01  # fp16 of the same model

    prune_args = ("--mlp", "0.25", "--calib", calib_file, "--calib-samples", "4", "--seq-len", "32")
    code, _, err = run_cli("-q", "prune", source, *prune_args, "--out", tmp_path / "pruned")
    if family in PRUNABLE:
        assert code == 0, err
    else:
        assert_one_line_error(code, err, "structured pruning does not support", f"'{family}'")

    distill_args = (
        "--samples",
        "8",
        "--prompt-tokens",
        "8",
        "--max-new-tokens",
        "8",
        "--steps",
        "2",
        "--no-eval",
    )
    code, _, err = run_cli(
        "-q", "distill", "--teacher", source, "--student", fp16, *distill_args, "--out", tmp_path / "healed"
    )
    assert code == 0, err

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"version: 1\nname: {family.replace('_', '-')}\nmodel: {source}\n"
        f"data:\n  calib: {{source: {calib_file}, samples: 8, seq_len: 32}}\n"
        f"  eval: {{source: {calib_file}, seq_len: 32, max_tokens: 512}}\n"
        "stages:\n  - {name: int4, quantize: {method: gptq, bits: 4, group_size: 16}}\n"
        "eval:\n  metrics: [ppl, kld, size]\n  gates: ['kld.mean<=10']\n"
    )
    code, _, err = run_cli("-q", "run", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["passed"] is True


def test_each_block_is_calibrated_with_its_own_mask_and_rotary_tables(tiny_model_dir):
    """Gemma 3 gives sliding-window layers a windowed mask and a local rotary base, global layers
    the causal mask and theirs: block 1 must be calibrated with its own, not block 0's."""
    model = load_model(resolve_model(tiny_model_dir("gemma3_text")), "float32", "cpu")
    captured = capture_block_inputs(model, discover_layout(model), torch.randint(3, 300, (3, 32)), 2)
    (_, sliding), (_, full) = captured.per_block[0][0], captured.per_block[1][0]
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])
    assert len(captured.first.hidden) == len(captured.per_block[1]) == 2  # every batch, every block


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_mixture_of_experts_quantizes_each_expert_on_the_tokens_routed_to_it(
    family, tiny_model_dir, calib_file, tmp_path
):
    """Experts (stacked 3-D tensors in transformers 5) are unfused into one linear pair each: GPTQ
    gathers each expert's Hessian from the tokens the router sends it (every token reaches top-k
    experts), the router stays float, and the artifact reloads exactly as rounded in memory."""
    source = tiny_model_dir(family)
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    _quantize_load_generate(source, calib_file, tmp_path, ids)
    layers = compress.read_manifest(tmp_path / "gptq").extra["layers"]
    config = load_model(resolve_model(source), "float32", "cpu").config
    experts = config.num_local_experts if family == "mixtral" else config.num_experts
    routed = sum(
        layers[f"model.layers.0.mlp.experts.{e}.gate_up_proj"]["calibration_tokens"] for e in range(experts)
    )
    windows = CALIBRATION["calib_samples"] * CALIBRATION["seq_len"]
    assert routed == windows * config.num_experts_per_tok
    assert not any("gate" in name and "experts" not in name for name in layers)  # the router stays float
    reference = load_model(resolve_model(source), "float32", "cpu")
    unfuse_experts(reference)
    _reloads_as_rounded(tmp_path / "rtn", reference, ids)


def test_an_expert_with_too_few_calibration_tokens_is_rounded_with_a_notice(
    tiny_model_dir, calib_file, tmp_path, monkeypatch, capsys
):
    from compress.quantize import calibrated

    monkeypatch.setattr(calibrated, "MIN_CALIBRATION_TOKENS", 10**6)
    out = compress.quantize(
        tiny_model_dir("mixtral"), tmp_path / "q", method="gptq", bits=4, group_size=GROUP, device="cpu",
        calib=str(calib_file), **CALIBRATION,
    )  # fmt: skip
    layers = compress.read_manifest(out).extra["layers"]
    rounded = {name for name, stats in layers.items() if stats.get("rounded_instead") == 1.0}
    assert rounded == {name for name in layers if ".experts." in name}  # dense layers see every token
    assert "too few calibration tokens for GPTQ" in capsys.readouterr().err


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_mixture_of_experts_is_refused_where_experts_would_stay_dense(
    family, tiny_model_dir, run_cli, tmp_path
):
    source = tiny_model_dir(family)
    cases = [
        (("quantize", source, "-m", "int8"), ["mixture-of-experts", f"'{family}'", "rtn, gptq, awq"]),
        (("quantize", source, "-m", "rtn", "--max-memory", "1GB"), ["does not stream", f"'{family}'"]),
        (("sparsify", source), ["sparsify does not support the mixture-of-experts model"]),
    ]
    for args, fragments in cases:
        code, _, err = run_cli(*args, "--out", tmp_path / "q")
        assert_one_line_error(code, err, *fragments)
        assert not (tmp_path / "q").exists()
    assert run_cli("-q", "quantize", source, "-m", "bf16", "--out", tmp_path / "bf16")[0] == 0


def test_the_readme_table_lists_every_family_the_matrix_runs():
    """The README's family table is the matrix's parametrization, prune column included."""
    from conftest import REPO_ROOT

    rows = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    table = {row.split("`")[1]: [cell.strip() for cell in row.split("|")[2:7]] for row in rows}
    dense = {family: cells for family, cells in table.items() if cells[0] == "✓"}
    assert list(dense) == list(FAMILIES)
    assert {family for family, cells in dense.items() if cells[2] == "✓"} == set(FAMILIES) & set(PRUNABLE)
