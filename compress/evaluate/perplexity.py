"""Perplexity over non-overlapping token windows (the GPTQ/AWQ papers' convention).

Each window is scored independently: position t predicts token t+1, so a window of `seq_len`
tokens contributes `seq_len - 1` scored tokens. The result is exp of the mean NLL over all scored
tokens, plus the standard error of the per-window mean NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    mean_nll: float
    stderr_nll: float  # standard error of the per-window mean NLL
    tokens: int
    windows: int


@torch.inference_mode()
def window_nll(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Summed NLL per window, [windows], computed in fp32 from the model's logits."""
    device = next(model.parameters()).device
    sums = []
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        sums.append(nll.view(targets.shape).sum(dim=1).cpu())
    return torch.cat(sums)


def perplexity(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> Perplexity:
    """Perplexity of `model` on `input_ids` [windows, seq_len]."""
    per_window = window_nll(model, input_ids, batch_size).double()
    scored_per_window = input_ids.shape[1] - 1
    tokens = scored_per_window * input_ids.shape[0]
    mean_nll = per_window.sum().item() / tokens
    window_means = per_window / scored_per_window
    stderr = (
        window_means.std(unbiased=True).item() / math.sqrt(len(window_means))
        if len(window_means) > 1
        else 0.0
    )
    return Perplexity(math.exp(mean_nll), mean_nll, stderr, tokens, int(input_ids.shape[0]))
