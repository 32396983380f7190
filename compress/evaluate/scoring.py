"""One streaming pass over the eval windows: per-window NLL, and divergence from a stored baseline.

The baseline's pass writes its next-token distributions to a `BaselineStore` on disk, one
safetensors chunk per batch; each artifact's pass reads the chunk of the same batch back and
compares position by position. Only one batch of logits is in memory at a time, and N artifacts
cost one baseline pass, not N. The store keeps either the full log-probabilities (tokens × vocab,
77 GB for WikiText-2 at a 128k vocabulary in fp16) or, by default, each position's top K
(`divergence.TopK`: 2 KB by default, whatever the vocabulary).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from compress import console
from compress.evaluate.divergence import DivergenceAccumulator, TopK
from compress.evaluate.suite import StoreLayout
from compress.staging import staged_directory

STORE_MARKER = "store.json"
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class PassResult:
    window_nll: torch.Tensor  # summed NLL per window, float64
    divergence: DivergenceAccumulator | None


class BaselineStore:
    """A baseline's next-token distributions over one set of windows, cached in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def is_complete(self) -> bool:
        return (self.directory / STORE_MARKER).is_file()

    def meta(self) -> dict:
        return json.loads((self.directory / STORE_MARKER).read_text())

    def rows(self, index: int, device: torch.device) -> list[torch.Tensor | TopK]:
        """Batch `index`, one entry per window: full log-probs [positions, vocab], or a `TopK`."""
        chunk = load_file(self.directory / f"chunk_{index:05d}.safetensors", device=str(device))
        if "log_probs" in chunk:
            return list(chunk["log_probs"].float())
        columns = [chunk[f"topk.{name}"] for name in _TOPK_FIELDS]
        columns = [column.long() if column.dtype == torch.int32 else column for column in columns]
        return [TopK(*row) for row in zip(*columns, strict=True)]


#: The `TopK` fields a top-K chunk stores, [batch, positions, …] each; indices as int32.
_TOPK_FIELDS = (
    "index",
    "log_probs",
    "argmax",
    "target_log_prob",
    "tail_log_mass",
    "tail_index",
    "tail_log_probs",
)


def _stored(chunk: LogProbChunk, layout: StoreLayout, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    """One slice of a batch as the store keeps it (`StoreLayout.bytes_per_position` per scored
    position); `offsets` [batch, positions, 1] are the tail samples' random offsets. A top-K
    summary sorts each position's vocabulary (values and int64 indices: 12 bytes a token), so it
    is taken a few positions at a time."""
    log_probs, targets = chunk.log_probs, chunk.targets
    if layout.topk is None:
        return {"log_probs": log_probs.to(_STORAGE_DTYPES[layout.storage_dtype]).cpu()}
    batch, positions, vocab = log_probs.shape
    flat, flat_targets, flat_offsets = (
        log_probs.reshape(-1, vocab),
        targets.reshape(-1),
        offsets.reshape(-1, 1),
    )
    rows = max(1, LOG_PROB_CHUNK_BYTES // (16 * vocab))
    parts = [
        TopK.of(
            flat[i : i + rows],
            flat_targets[i : i + rows],
            layout.topk,
            layout.tail_samples,
            flat_offsets[i : i + rows],
        )
        for i in range(0, flat.shape[0], rows)
    ]
    stored = {}
    for name in _TOPK_FIELDS:
        value = torch.cat([getattr(part, name) for part in parts])
        value = value.to(torch.int32) if value.dtype == torch.long else value
        stored[f"topk.{name}"] = value.reshape(batch, positions, *value.shape[1:]).cpu()
    return stored


def _joined(pieces: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch's slices joined along positions: one chunk file per batch, as the store reads it."""
    return {name: torch.cat([piece[name] for piece in pieces], dim=1).contiguous() for name in pieces[0]}


def _positions(base: torch.Tensor | TopK, span: slice) -> torch.Tensor | TopK:
    """A baseline window's entries at `span`."""
    if isinstance(base, TopK):
        return TopK(*(getattr(base, name)[span] for name in _TOPK_FIELDS))
    return base[span]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


#: Bytes of float32 log-probabilities computed at once. A batch of 8 windows of 512 tokens at a
#: 262,144-token vocabulary (Gemma 3) is 4.3 GB of logits, and log-softmax doubles it: the output
#: head runs on slices of positions instead, so memory does not grow with the vocabulary.
LOG_PROB_CHUNK_BYTES = 256 * 2**20


@dataclass
class LogProbChunk:
    """Log-probabilities of the next token at positions `positions` of every window in a batch."""

    positions: slice
    log_probs: torch.Tensor  # [batch, positions, vocab] float32
    targets: torch.Tensor  # [batch, positions]


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward computes logits only at chosen positions (`logits_to_keep`)."""
    parameters = inspect.signature(model.forward).parameters
    return "logits_to_keep" in parameters and getattr(model, "base_model", model) is not model


@contextmanager
def _body_once(model: nn.Module) -> Iterator[None]:
    """While open, the model's body (everything before the output head) runs once per input: its
    output is kept from the first call and handed back to every later one, so the head and the
    family's own logit processing (Gemma's soft-capping, Cohere's and Granite's logit scales) run
    per slice of positions through the model's own forward."""
    body = model.base_model
    kept: dict[str, object] = {}
    call = body.forward

    def forward(*args, **kwargs):
        if "output" not in kept:
            kept["output"] = call(*args, **kwargs)
        return kept["output"]

    body.forward = forward
    try:
        yield
    finally:
        del body.forward


def log_prob_chunks(model: nn.Module, batch: torch.Tensor) -> Iterator[LogProbChunk]:
    """The batch's next-token log-probabilities, position slice by position slice, each small
    enough for `LOG_PROB_CHUNK_BYTES` (models without `logits_to_keep`, such as llama.cpp's
    runtime, compute all logits at once; their log-softmax is still taken by slices)."""
    device = _device_of(model)
    batch = batch.to(device)
    targets = batch[:, 1:]
    positions = targets.shape[1]
    vocab = model.config.get_text_config().vocab_size
    step = max(1, LOG_PROB_CHUNK_BYTES // (4 * vocab * batch.shape[0]))
    if not _keeps_logits(model):
        logits = model(input_ids=batch).logits
        for start in range(0, positions, step):
            span = slice(start, min(start + step, positions))
            yield LogProbChunk(span, F.log_softmax(logits[:, span].float(), dim=-1), targets[:, span])
        return
    with _body_once(model):
        for start in range(0, positions, step):
            span = slice(start, min(start + step, positions))
            keep = torch.arange(span.start, span.stop, device=device)
            logits = model(input_ids=batch, logits_to_keep=keep, use_cache=False).logits
            yield LogProbChunk(span, F.log_softmax(logits.float(), dim=-1), targets[:, span])
            del logits


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the targets, per window: [b]."""
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(dim=1).double().cpu()


@torch.inference_mode()
def score_pass(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    baseline: BaselineStore | None = None,
    description: str = "scoring",
) -> PassResult:
    """Per-window NLL of `model`, plus divergence statistics when a baseline store is given."""
    if baseline is not None:
        batch_size = baseline.meta()["batch_size"]  # chunks were written batch by batch
    divergence = DivergenceAccumulator() if baseline is not None else None
    sums = []
    batches = range(0, input_ids.shape[0], batch_size)
    with console.progress() as bar:
        task = bar.add_task(description, total=len(batches), status="")
        for index, start in enumerate(batches):
            batch = input_ids[start : start + batch_size]
            rows = baseline.rows(index, _device_of(model)) if baseline is not None else None
            nll = torch.zeros(batch.shape[0], dtype=torch.float64)
            for chunk in log_prob_chunks(model, batch):
                nll += _nll(chunk.log_probs, chunk.targets)
                for row, base in enumerate(rows or ()):
                    divergence.add(
                        _positions(base, chunk.positions), chunk.log_probs[row], chunk.targets[row]
                    )
            sums.append(nll)
            bar.update(task, advance=1)
    return PassResult(torch.cat(sums), divergence)


@torch.inference_mode()
def write_baseline_store(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    directory: Path,
    layout: StoreLayout,
    meta: dict,
) -> PassResult:
    """The baseline's pass: per-window NLL, with every batch's distributions written to
    `directory` as `layout` says (tail samples drawn from one seeded generator: reproducible)."""
    generator = torch.Generator().manual_seed(0)
    sums = []
    batches = range(0, input_ids.shape[0], batch_size)
    with staged_directory(directory, force=True, marker=STORE_MARKER) as staging, console.progress() as bar:
        task = bar.add_task("scoring the baseline", total=len(batches), status="")
        for index, start in enumerate(batches):
            batch = input_ids[start : start + batch_size]
            nll = torch.zeros(batch.shape[0], dtype=torch.float64)
            offsets = torch.rand(batch.shape[0], batch.shape[1] - 1, 1, generator=generator)
            pieces = []
            for chunk in log_prob_chunks(model, batch):
                nll += _nll(chunk.log_probs, chunk.targets)
                pieces.append(_stored(chunk, layout, offsets[:, chunk.positions]))
            sums.append(nll)
            save_file(_joined(pieces), staging / f"chunk_{index:05d}.safetensors")
            bar.update(task, advance=1)
        window_nll = torch.cat(sums)
        record = {**meta, "batch_size": batch_size, "layout": layout.describe()}
        record["window_nll"] = window_nll.tolist()
        (staging / STORE_MARKER).write_text(json.dumps(record))
    return PassResult(window_nll, None)
