"""Perplexity over non-overlapping token windows (the GPTQ/AWQ papers' convention).

Each window is scored independently: position t predicts token t+1, so a window of `seq_len`
tokens contributes `seq_len - 1` scored tokens. The result is exp of the mean NLL over all scored
tokens, plus the standard error of the per-window mean NLL (windows are the independent units).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compress.evaluate.scoring import score_pass


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    mean_nll: float
    stderr_nll: float  # standard error of the per-window mean NLL
    tokens: int
    windows: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(window_nll: torch.Tensor, seq_len: int) -> Perplexity:
    """Perplexity from the summed NLL of each window."""
    per_window = window_nll.double()
    scored_per_window = seq_len - 1
    tokens = scored_per_window * per_window.numel()
    mean_nll = per_window.sum().item() / tokens
    window_means = per_window / scored_per_window
    count = window_means.numel()
    stderr = window_means.std(unbiased=True).item() / math.sqrt(count) if count > 1 else 0.0
    return Perplexity(math.exp(mean_nll), mean_nll, stderr, tokens, count)


def perplexity(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> Perplexity:
    """Perplexity of `model` on `input_ids` [windows, seq_len]."""
    return summarize(score_pass(model, input_ids, batch_size).window_nll, input_ids.shape[1])
