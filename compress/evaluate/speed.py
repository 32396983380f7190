"""Inference speed and weight memory of an already-loaded causal LM, on the device it sits on.

Compression is only worth its quality cost if the model gets cheaper to serve, so speed is
measured the way a server spends time: one prefill over the prompt (its time is the time to first
token), then greedy decode steps through the KV cache, each timed on its own so per-token latency
percentiles exist. The decode loop is written out by hand rather than calling `generate`, whose
sampling machinery, stopping criteria and logits processors would be timed along with the model.
Prompts are random token ids from a seeded generator: speed does not depend on what the tokens say.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from compress.errors import CompressError


class SpeedSettings(BaseModel):
    """What to measure; the defaults are a short chat turn at batch 1 and a small server batch."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: PositiveInt = 128  # prefill length (shortened to fit the model's context)
    new_tokens: PositiveInt = 32  # decode steps measured
    batch_sizes: list[PositiveInt] = Field(default=[1, 8], min_length=1)
    warmup: int = Field(default=1, ge=0)  # untimed runs first (allocator, kernels, caches)
    repeats: PositiveInt = 3  # timed runs; the fastest is kept (timeit's rule: noise only adds time)
    seed: int = 0


@dataclass(frozen=True)
class DecodeRun:
    """One greedy generation: the tokens it produced and how long each part took."""

    tokens: torch.Tensor  # [batch, new_tokens + 1]: the prefill's token, then one per decode step
    prefill_s: float  # prompt in, first token's logits out
    step_s: list[float]  # one entry per decode step
    head_s: float | None = None  # of the decode steps, time spent in the output head (None: no head module)


def _synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously; the clock is only meaningful once they have finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model: nn.Module) -> str:
    """The KV cache's keyword: transformers 5.24 renamed `past_key_values` to `cache`.

    The old name still works there but logs a deprecation warning (until 5.40), and the project
    supports every transformers 5 release, so the name is read from the model's signature.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _HeadClock:
    """Time spent in the output head, summed while `running`: on a small model with a large
    vocabulary (Gemma 3 270M: 262k × 640) the head is a large share of every decode step, and a
    compressed model that leaves it alone cannot get much faster."""

    def __init__(self, model: nn.Module) -> None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.seconds: float | None = 0.0 if isinstance(head, nn.Module) else None
        self.running = False
        self._handles = (
            []
            if head is None or self.seconds is None
            else [
                head.register_forward_pre_hook(self._start),
                head.register_forward_hook(self._stop),
            ]
        )
        self._device = _device_of(model)
        self._started = 0.0

    def _start(self, module, args) -> None:
        if self.running:
            _synchronize(self._device)
            self._started = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        if self.running:
            _synchronize(self._device)
            self.seconds += time.perf_counter() - self._started

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _prefill_arguments(model: nn.Module) -> dict:
    """Logits at the last position only, where the model allows it (as `generate` asks): the
    whole prompt's logits are 1 GB at a 262k vocabulary and batch 8 × 128, and are not used."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.inference_mode()
def timed_greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> DecodeRun:
    """Prefill `prompt` [batch, length], then `new_tokens` greedy steps through the KV cache.

    Each step feeds only the newest token with the cache of everything before it, which is what a
    serving engine does; the token count the model sees is `length + new_tokens`.
    """
    device = _device_of(model)
    cache_argument = _cache_argument(model)
    prompt = prompt.to(device)
    head = _HeadClock(model)
    try:
        _synchronize(device)
        start = time.perf_counter()
        output = model(input_ids=prompt, use_cache=True, **_prefill_arguments(model))
        token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        _synchronize(device)
        prefill_s = time.perf_counter() - start
        tokens, step_s = [token], []
        head.running = True
        for _ in range(new_tokens):
            start = time.perf_counter()
            cache = {cache_argument: getattr(output, cache_argument)}
            output = model(input_ids=token, use_cache=True, **cache)
            token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
            _synchronize(device)
            step_s.append(time.perf_counter() - start)
            tokens.append(token)
    finally:
        head.close()
    return DecodeRun(torch.cat(tokens, dim=1).cpu(), prefill_s, step_s, head.seconds)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position scheme allows, when its config states one."""
    config = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return None


def _prompt_length(model: nn.Module, settings: SpeedSettings) -> int:
    """`prompt_tokens`, shortened so that prompt plus decode steps fit the model's positions."""
    limit = max_positions(model)
    if limit is None:
        return settings.prompt_tokens
    if settings.new_tokens >= limit:
        raise CompressError(
            f"cannot measure {settings.new_tokens} decode steps: the model holds at most {limit} "
            f"positions, which leaves no room for a prompt; lower new_tokens below {limit}"
        )
    return min(settings.prompt_tokens, limit - settings.new_tokens)


def _random_prompt(batch: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """Seeded on the CPU, so the same settings give the same prompt on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def _decode_tok_s(run: DecodeRun, batch: int) -> float:
    """Generated tokens per second over the decode steps (every row yields one token per step)."""
    return batch * len(run.step_s) / sum(run.step_s)


def _head_share(run: DecodeRun) -> float | None:
    """Percent of the decode steps' time spent in the output head."""
    return None if run.head_s is None else 100.0 * run.head_s / sum(run.step_s)


def _interleaved_runs(
    models: dict[str, nn.Module], prompt: torch.Tensor, settings: SpeedSettings
) -> dict[str, list[DecodeRun]]:
    """Every model's repeats, taken in turns (a, b, a, b, …) on the same prompt.

    On a shared machine the load drifts; taking turns spreads it evenly over the candidates, so
    their ratio holds even when absolute times do not.
    """
    for _ in range(settings.warmup):
        for model in models.values():
            timed_greedy_decode(model, prompt, settings.new_tokens)
    runs: dict[str, list[DecodeRun]] = {name: [] for name in models}
    for _ in range(settings.repeats):
        for name, model in models.items():
            runs[name].append(timed_greedy_decode(model, prompt, settings.new_tokens))
    return runs


def _summarize(runs: dict[int, list[DecodeRun]], length: int, settings: SpeedSettings, device: str) -> dict:
    """The fastest repeat (timeit's rule: noise only adds time) and the spread of the repeats."""
    best = {
        batch: min(batch_runs, key=lambda run: run.prefill_s + sum(run.step_s))
        for batch, batch_runs in runs.items()
    }
    single = best[1]
    p50, p95, p99 = np.percentile(np.array(single.step_s) * 1000.0, [50, 95, 99])

    def spread(batch: int) -> float:
        rates = [_decode_tok_s(run, batch) for run in runs[batch]]
        return (max(rates) - min(rates)) / max(rates) * 100.0

    return {
        "device": device,
        "prefill_tok_s": length / single.prefill_s,
        "ttft_ms": single.prefill_s * 1000.0,
        "decode_tok_s": {str(batch): _decode_tok_s(best[batch], batch) for batch in settings.batch_sizes},
        "decode_spread_pct": {str(batch): spread(batch) for batch in settings.batch_sizes},
        "head_share_pct": {str(batch): _head_share(best[batch]) for batch in settings.batch_sizes},
        "latency_ms": {"p50": float(p50), "p95": float(p95), "p99": float(p99)},
        "prompt_tokens": length,
        "new_tokens": settings.new_tokens,
        "repeats": settings.repeats,
        "threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def measure_speeds(
    models: dict[str, nn.Module], settings: SpeedSettings, vocab_size: int | None = None
) -> dict[str, dict]:
    """Prefill and decode throughput, time to first token and per-token latency of each model,
    measured side by side: the same prompts, repeats interleaved, in this one process.

    `vocab_size` bounds the random prompt ids; it defaults to the smallest config's, and can be
    lowered when the embedding matrix is padded past the tokenizer's real vocabulary. Batch 1 is
    always measured: time to first token and latency are single-request figures.
    """
    first = next(iter(models.values()))
    vocab_size = vocab_size or min(m.config.get_text_config().vocab_size for m in models.values())
    length = min(_prompt_length(model, settings) for model in models.values())
    runs: dict[str, dict[int, list[DecodeRun]]] = {name: {} for name in models}
    for batch in sorted({1, *settings.batch_sizes}):
        prompt = _random_prompt(batch, length, vocab_size, settings.seed)
        for name, batch_runs in _interleaved_runs(models, prompt, settings).items():
            runs[name][batch] = batch_runs
    device = str(_device_of(first))
    return {name: _summarize(model_runs, length, settings, device) for name, model_runs in runs.items()}


def measure_speed(model: nn.Module, settings: SpeedSettings, vocab_size: int | None = None) -> dict:
    """`measure_speeds` for one model on its own."""
    return measure_speeds({"model": model}, settings, vocab_size)["model"]


def speed_ratios(speed: dict, baseline: dict) -> dict:
    """speed ÷ baseline's for prefill and every decode batch: >1 means faster than the baseline."""
    ratios = {"prefill": speed["prefill_tok_s"] / baseline["prefill_tok_s"]}
    for batch, rate in speed["decode_tok_s"].items():
        if batch in baseline["decode_tok_s"]:
            ratios[f"decode_{batch}"] = rate / baseline["decode_tok_s"][batch]
    return ratios


def weight_memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers, each storage counted once.

    Counting storages rather than tensors is what makes tied embeddings (one matrix reachable as
    both input and output embedding) and views into one fused buffer count once, as they are
    resident once. A model whose weights live outside torch (llama.cpp's mapped GGUF) says how
    many bytes they take in `external_weight_bytes`.
    """
    storages: dict[tuple[torch.device, int], int] = {}
    for tensor in chain(model.parameters(), model.buffers()):
        if tensor.device.type == "meta":  # offloaded: not resident anywhere
            continue
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values()) + int(getattr(model, "external_weight_bytes", 0))


def cost_per_million_tokens(price_per_hour: float, decode_tok_s: float) -> float:
    """USD per million generated tokens for a machine rented at `price_per_hour` USD."""
    if not (decode_tok_s > 0 and math.isfinite(decode_tok_s)):
        raise CompressError(f"decode throughput must be a positive number of tokens/s, got {decode_tok_s}")
    if price_per_hour < 0:
        raise CompressError(f"the hourly price cannot be negative, got {price_per_hour}")
    return price_per_hour / (decode_tok_s * 3600.0) * 1_000_000
