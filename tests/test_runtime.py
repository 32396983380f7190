"""Packed artifacts on the fast runtime: same greedy tokens as the exact path, shapes no kernel
takes still run, and the harness records the kernels and times speed beside the baseline."""

from __future__ import annotations

import pytest
import torch
from conftest import STORIES_MODEL

import compress
from compress.artifact import describe
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.speed import SpeedSettings, timed_greedy_decode
from compress.evaluate.suite import load_suite
from compress.modeling import load_model, resolve_model
from compress.quantize.packed import load_packed
from compress.quantize.runtime import prepare_runtime, runtime_summary

pytestmark = pytest.mark.slow

CALIBRATION = "builtin:python-stdlib:train"


@pytest.fixture(scope="module")
def gptq_artifact(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime") / "gptq4"
    return compress.quantize(
        demo[0], out, bits=4, calib=CALIBRATION, calib_samples=8, seq_len=128, device="cpu"
    )


def test_the_fast_path_gives_the_exact_paths_greedy_tokens(gptq_artifact):
    """Kernels run in float32 here so that only the repacking can differ from the exact path."""
    exact = load_packed(resolve_model(gptq_artifact), "cpu", "float32")
    fast = load_packed(resolve_model(gptq_artifact), "cpu", "float32")
    assert prepare_runtime(fast, torch.float32) == {"int4pack-cpu": 21}
    prompts = torch.randint(0, 1000, (4, 24), generator=torch.Generator().manual_seed(0))
    expected = timed_greedy_decode(exact, prompts, 32).tokens
    assert torch.equal(timed_greedy_decode(fast, prompts, 32).tokens, expected)


def test_the_runtime_loads_in_bfloat16_with_every_layer_on_a_kernel(gptq_artifact):
    model = load_packed(resolve_model(gptq_artifact), "cpu", "auto")
    summary = runtime_summary(model)
    assert summary["dtype"] == "bfloat16" and summary["kernels"] == {"int4pack-cpu": 21}
    assert summary["kernel_notes"] == {"groups of 86 padded to 128": 3}  # down_proj: 344 = 4·86
    assert describe(gptq_artifact)["quantized_layers"]["kernels"]["layers"] == {"int4pack-cpu": 21}


@pytest.mark.skipif(not STORIES_MODEL.is_dir(), reason="../shared/models/stories260K is absent")
@pytest.mark.parametrize(
    ("bits", "group", "kernels"),
    [
        (4, None, {"int4pack-cpu": 35}),
        (8, -1, {"int8pack": 35}),
        (8, None, {"int8pack": 30, "dequantize": 5}),
    ],
)
def test_stories260k_runs_on_kernels_or_the_exact_path(bits, group, kernels, tmp_path):
    """Widths 64 and 172 (groups of 64 and 86 by default): int4 pads output 172 to 176 and groups
    of 86 to 128, int8 pads input 172 to 176. By default the 64-wide layers are one group per row
    (int8pack at 8 bits), and down_proj's 8-bit groups of 86 have no kernel: they run exactly."""
    out = compress.quantize(STORIES_MODEL, tmp_path / "q", method="rtn", bits=bits, group_size=group)
    model = load_packed(resolve_model(out), "cpu", "auto")
    assert runtime_summary(model)["kernels"] == kernels
    baseline = load_model(resolve_model(STORIES_MODEL), dtype="float32", device="cpu")
    ids = torch.randint(3, 500, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        base = torch.log_softmax(baseline(input_ids=ids).logits, -1)
    kld = (base.exp() * (base - ours)).sum(-1).mean().item()
    assert kld < (0.2 if bits == 4 else 0.02)


def test_eval_records_kernels_and_times_speed_beside_the_baseline(demo, gptq_artifact):
    speed = SpeedSettings(prompt_tokens=16, new_tokens=4, batch_sizes=[1, 2], repeats=2, warmup=0)
    suite = load_suite("quick").model_copy(
        update={"metrics": ["ppl", "kld", "speed"], "max_tokens": 1024, "speed": speed}
    )
    report, problems = evaluate(EvalRequest([str(gptq_artifact)], suite.check(), demo[0], reuse=False))
    assert not problems
    result = report.results[0]
    assert result.runtime["quality_dtype"] == "float32"  # the quick suite scores quality exactly
    assert result.runtime["dtype"] == "bfloat16" and result.runtime["kernels"] == {"int4pack-cpu": 21}
    measured = result.metrics["speed"]
    assert set(measured["vs_baseline"]) == {"prefill", "decode_1", "decode_2"}
    ratio = measured["decode_tok_s"]["1"] / measured["baseline"]["decode_tok_s"]["1"]
    assert measured["vs_baseline"]["decode_1"] == pytest.approx(ratio)
    assert measured["threads"] == torch.get_num_threads() and measured["repeats"] == 2
    assert report.baseline.runtime == {"quality_dtype": "float32", "dtype": "float32", "kernels": {}}
