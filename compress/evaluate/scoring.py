"""One streaming pass over the eval windows: per-window NLL, and divergence from a stored baseline.

The baseline's pass writes its next-token distributions to a `BaselineStore` on disk, one
safetensors chunk per batch; each artifact's pass reads the chunk of the same batch back and
compares position by position. Only one batch of logits is in memory at a time, and N artifacts
cost one baseline pass, not N. The store keeps either the full log-probabilities (tokens × vocab,
77 GB for WikiText-2 at a 128k vocabulary in fp16) or, by default, each position's top K
(`divergence.TopK`: 2 KB by default, whatever the vocabulary).
"""

from __future__ import annotations

import json
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


def _chunk(log_probs: torch.Tensor, targets: torch.Tensor, layout: StoreLayout, generator) -> dict:
    """One batch as the store keeps it (`StoreLayout.bytes_per_position` per scored position)."""
    if layout.topk is None:
        dtype = _STORAGE_DTYPES[layout.storage_dtype]
        return {"log_probs": log_probs.to(dtype).cpu().contiguous()}
    batch, positions, vocab = log_probs.shape
    top = TopK.of(
        log_probs.reshape(-1, vocab), targets.reshape(-1), layout.topk, layout.tail_samples, generator
    )
    chunk = {}
    for name in _TOPK_FIELDS:
        value = getattr(top, name)
        value = value.to(torch.int32) if value.dtype == torch.long else value
        chunk[f"topk.{name}"] = value.reshape(batch, positions, *value.shape[1:]).cpu().contiguous()
    return chunk


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch_log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """fp32 log-probabilities of the next token at every position but the last: [b, t-1, vocab]."""
    logits = model(input_ids=batch.to(_device_of(model))).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1)


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
            targets = batch[:, 1:].to(_device_of(model))
            log_probs = _batch_log_probs(model, batch)
            sums.append(_nll(log_probs, targets))
            if divergence is not None:
                for row, base in enumerate(baseline.rows(index, log_probs.device)):
                    divergence.add(base, log_probs[row], targets[row])
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
            log_probs = _batch_log_probs(model, batch)
            targets = batch[:, 1:].to(log_probs.device)
            sums.append(_nll(log_probs, targets))
            chunk = _chunk(log_probs, targets, layout, generator)
            save_file(chunk, staging / f"chunk_{index:05d}.safetensors")
            bar.update(task, advance=1)
        window_nll = torch.cat(sums)
        record = {**meta, "batch_size": batch_size, "layout": layout.describe()}
        record["window_nll"] = window_nll.tolist()
        (staging / STORE_MARKER).write_text(json.dumps(record))
    return PassResult(window_nll, None)
