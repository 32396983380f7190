"""Speed and memory measurement: the shape of the report and the honesty of what it times.

No test asserts a speed: timings on shared CI machines are noise, and speed goals live in
`bench/`. What is checked is that the numbers exist and are sane, that the timed decode loop is a
real greedy decode through the KV cache (it reproduces `generate`), and that memory and cost
arithmetic are exact.
"""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from conftest import ARCHITECTURES, TINY_VOCAB

from compress.errors import CompressError
from compress.evaluate.speed import (
    SpeedSettings,
    cost_per_million_tokens,
    measure_speed,
    timed_greedy_decode,
    weight_memory_bytes,
)
from compress.modeling import load_model, resolve_model

QUICK = SpeedSettings(prompt_tokens=16, new_tokens=6, batch_sizes=[1, 3], warmup=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module on one CPU thread.

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP
    threads wait on each other at every op: a decode step took 250× longer (2 s instead of 8 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(tiny_model_dir, architecture: str):
    return load_model(resolve_model(tiny_model_dir(architecture)), device="cpu")


def _positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_report_has_every_figure(tiny_model_dir):
    report = measure_speed(_load(tiny_model_dir, "llama"), QUICK)
    assert report["device"] == "cpu"
    assert report["prompt_tokens"] == 16 and report["new_tokens"] == 6
    assert _positive(report["prefill_tok_s"]) and _positive(report["ttft_ms"])
    assert set(report["decode_tok_s"]) == {"1", "3"}
    assert all(_positive(value) for value in report["decode_tok_s"].values())
    latency = report["latency_ms"]
    assert all(_positive(latency[name]) for name in ("p50", "p95", "p99"))
    assert latency["p50"] <= latency["p95"] <= latency["p99"]


def test_batch_one_is_measured_even_when_not_listed(tiny_model_dir):
    settings = QUICK.model_copy(update={"batch_sizes": [2]})
    report = measure_speed(_load(tiny_model_dir, "llama"), settings)
    assert set(report["decode_tok_s"]) == {"2"}
    assert _positive(report["ttft_ms"]) and _positive(report["latency_ms"]["p50"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decode_loop_is_greedy_generation(tiny_model_dir, architecture):
    """The KV-cache loop yields exactly `generate`'s greedy tokens, so it is a real decode."""
    model = _load(tiny_model_dir, architecture)
    prompt = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    run = timed_greedy_decode(model, prompt, new_tokens=7)
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8, eos_token_id=None
    )
    assert run.tokens.shape == (2, 8) and len(run.step_s) == 7
    assert torch.equal(run.tokens, generated[:, prompt.shape[1] :])
    assert set(measure_speed(model, QUICK)["decode_tok_s"]) == {"1", "3"}


def test_prompt_is_shortened_to_fit_the_context(tiny_model_dir):
    model = _load(tiny_model_dir, "gpt2")  # n_positions 128
    report = measure_speed(model, SpeedSettings(prompt_tokens=500, new_tokens=8, batch_sizes=[1], warmup=0))
    assert report["prompt_tokens"] == 120


def test_decode_longer_than_the_context_is_refused(tiny_model_dir):
    with pytest.raises(CompressError, match="128 positions"):
        measure_speed(_load(tiny_model_dir, "opt"), SpeedSettings(new_tokens=128))


def test_settings_refuse_unknown_and_nonsense_values():
    with pytest.raises(pydantic.ValidationError):
        SpeedSettings(prompt_len=4)
    with pytest.raises(pydantic.ValidationError):
        SpeedSettings(batch_sizes=[0])
    with pytest.raises(pydantic.ValidationError):
        SpeedSettings(batch_sizes=[])


def test_weight_memory_counts_tied_embeddings_once_and_halves_in_fp16(tiny_model_dir):
    model = _load(tiny_model_dir, "gpt2")
    embedding = model.get_input_embeddings().weight
    assert embedding is model.get_output_embeddings().weight
    unique = sum(p.numel() * p.element_size() for p in model.parameters())
    unique += sum(b.numel() * b.element_size() for b in model.buffers())
    every_name = sum(p.numel() * p.element_size() for _, p in model.named_parameters(remove_duplicate=False))
    fp32 = weight_memory_bytes(model)
    assert fp32 == unique == every_name - embedding.numel() * 4
    assert weight_memory_bytes(model.half()) * 2 == fp32


def test_weight_memory_includes_buffers(tiny_model_dir):
    model = _load(tiny_model_dir, "llama")  # untied, with rotary-frequency buffers
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert buffers > 0
    assert weight_memory_bytes(model) == parameters + buffers


def test_cost_per_million_tokens():
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)
    assert cost_per_million_tokens(0.0, 50.0) == 0.0
    with pytest.raises(CompressError):
        cost_per_million_tokens(1.0, 0.0)
    with pytest.raises(CompressError):
        cost_per_million_tokens(-1.0, 10.0)
