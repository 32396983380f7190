"""The output head and the embedding table, quantized (`--head-bits`, `--embedding-bits`; issue 27).

On Llama (head and embedding apart) and Gemma 3 (tied, with a scaled embedding): every combination
reloads exactly as the source with those matrices rounded in memory, runs on the kernels it claims,
and a tied pair quantized alike is stored once.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, round_block_linears

import compress
from compress.evaluate.loaders import load_for_eval
from compress.modeling import load_model, resolve_model
from compress.quantize.runtime import runtime_summary
from compress.quantize.vocab import quantize_rows

GROUP = 16
COMBINATIONS = [(8, None), (4, None), (None, 8), (8, 8), (4, 4), (8, 4)]


def _rounded_in_memory(source, head_bits, embedding_bits):
    """The source with its block linears, head and embedding rounded as the artifact claims."""
    model = round_block_linears(load_model(resolve_model(source), "float32", "cpu"), 4, GROUP)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    table = embedding.weight.data.clone()
    with torch.no_grad():
        if head.weight is embedding.weight:
            head.weight = torch.nn.Parameter(table.clone())  # untied: each gets its own rounding
        if head_bits:
            head.weight.copy_(quantize_rows(head.weight.data, head_bits, GROUP, True).dequantize())
        if embedding_bits:
            embedding.weight.copy_(quantize_rows(table, embedding_bits, GROUP, True).dequantize())
    return model


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize(("head_bits", "embedding_bits"), COMBINATIONS)
def test_head_and_embedding_reload_as_rounded_and_run_on_their_kernels(
    family, head_bits, embedding_bits, tiny_model_dir, tmp_path
):
    source = tiny_model_dir(family)
    out = compress.quantize(
        source, tmp_path / "q", method="rtn", bits=4, group_size=GROUP, device="cpu",
        head_bits=head_bits, embedding_bits=embedding_bits,
    )  # fmt: skip
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = _rounded_in_memory(source, head_bits, embedding_bits)
    exact = load_for_eval(resolve_model(out), "cpu", "float32")
    with torch.inference_mode():
        torch.testing.assert_close(
            exact(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=1e-3, atol=2e-3
        )
    runtime = load_for_eval(resolve_model(out), "cpu", "auto")
    kernels = runtime_summary(runtime)["kernels"]
    head_kernel = {8: "int8pack", 4: "int4pack-cpu"}.get(head_bits)
    if head_kernel:
        assert runtime.get_output_embeddings().plan.kernel == head_kernel
    assert kernels.get("row-lookup", 0) == (1 if embedding_bits else 0)
    generated = runtime.generate(input_ids=ids[:1], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 15)


def test_a_tied_pair_quantized_alike_is_stored_once(tiny_model_dir, tmp_path):
    source = tiny_model_dir("gemma3_text")

    def weight_bytes(**bits) -> int:
        out = compress.quantize(source, tmp_path / str(bits), method="rtn", bits=4, device="cpu", **bits)
        return sum(file.stat().st_size for file in out.glob("*.safetensors"))

    kept, head_only, shared = (
        weight_bytes(),
        weight_bytes(head_bits=8),
        weight_bytes(head_bits=8, embedding_bits=8),
    )
    assert shared < kept < head_only  # quantizing only a tied head stores the float table beside it


def test_vocabulary_options_are_refused_where_they_do_nothing(run_cli, tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    cases = [
        (("-m", "fp16", "--head-bits", "8"), "--head-bits has no effect with --method fp16"),
        (("-m", "int8", "--embedding-bits", "8"), "--embedding-bits has no effect with --method int8"),
        (("-m", "rtn", "--head-bits", "5"), "--head-bits must be one of 8, 4"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli("quantize", model, *args, "--out", tmp_path / "o")
        assert_one_line_error(code, err, fragment)
    artifact = compress.quantize(model, tmp_path / "e", method="rtn", bits=4, device="cpu", embedding_bits=8)
    code, _, err = run_cli("export", "gguf", artifact, "--type", "f16", "--out", tmp_path / "g")
    assert_one_line_error(code, err, "embedding table is quantized")
