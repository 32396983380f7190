"""One streaming pass over the eval windows: per-window NLL, and divergence from a stored baseline.

The baseline's pass writes its next-token log-probabilities to a `BaselineStore` on disk, one
safetensors chunk per batch; each artifact's pass reads the chunk of the same batch back and
compares position by position. Only one batch of logits is in memory at a time, and N artifacts
cost one baseline pass, not N.
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
from compress.artifact import staged_directory
from compress.evaluate.divergence import DivergenceAccumulator

STORE_MARKER = "store.json"
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class PassResult:
    window_nll: torch.Tensor  # summed NLL per window, float64
    divergence: DivergenceAccumulator | None


class BaselineStore:
    """A baseline's log-probabilities over one set of windows, cached in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def is_complete(self) -> bool:
        return (self.directory / STORE_MARKER).is_file()

    def meta(self) -> dict:
        return json.loads((self.directory / STORE_MARKER).read_text())

    def chunk(self, index: int) -> torch.Tensor:
        return load_file(self.directory / f"chunk_{index:05d}.safetensors")["log_probs"].float()


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
                base = baseline.chunk(index).to(log_probs.device)
                for row in range(batch.shape[0]):
                    divergence.add(base[row], log_probs[row], targets[row])
            bar.update(task, advance=1)
    return PassResult(torch.cat(sums), divergence)


@torch.inference_mode()
def write_baseline_store(
    model: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    directory: Path,
    storage_dtype: str,
    meta: dict,
) -> PassResult:
    """The baseline's pass: per-window NLL, with every batch's log-probs written to `directory`."""
    dtype = _STORAGE_DTYPES[storage_dtype]
    sums = []
    batches = range(0, input_ids.shape[0], batch_size)
    with staged_directory(directory, force=True, marker=STORE_MARKER) as staging, console.progress() as bar:
        task = bar.add_task("scoring the baseline", total=len(batches), status="")
        for index, start in enumerate(batches):
            batch = input_ids[start : start + batch_size]
            log_probs = _batch_log_probs(model, batch)
            sums.append(_nll(log_probs, batch[:, 1:].to(log_probs.device)))
            chunk = {"log_probs": log_probs.to(dtype).cpu().contiguous()}
            save_file(chunk, staging / f"chunk_{index:05d}.safetensors")
            bar.update(task, advance=1)
        window_nll = torch.cat(sums)
        record = {**meta, "batch_size": batch_size, "storage_dtype": storage_dtype}
        record["window_nll"] = window_nll.tolist()
        (staging / STORE_MARKER).write_text(json.dumps(record))
    return PassResult(window_nll, None)
