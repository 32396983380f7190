"""Token-level divergence between a baseline's and an artifact's next-token distributions.

All functions take log-probabilities over the full vocabulary, shaped [positions, vocab], in fp32.
`DivergenceAccumulator` keeps one float per scored token (not per vocabulary entry), so memory
grows with the number of tokens, never with tokens × vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def kl_divergence(base_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(P_base ‖ P) per position: Σ_v p_base(v) · (log p_base(v) − log p(v)).

    Entries where the baseline gives probability 0 contribute 0 (the 0·log 0 convention).
    """
    base_probs = base_log_probs.exp()
    terms = base_probs * (base_log_probs - log_probs)
    return torch.where(base_probs > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


@dataclass
class DivergenceAccumulator:
    """Per-token KLD, top-1 agreement and Δp of the reference token, gathered window by window."""

    kld: list[torch.Tensor] = field(default_factory=list)
    same_top1: list[torch.Tensor] = field(default_factory=list)
    delta_p: list[torch.Tensor] = field(default_factory=list)

    def add(self, base_log_probs: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """One window: log-probs [positions, vocab] of both models and the reference tokens [positions]."""
        self.kld.append(kl_divergence(base_log_probs, log_probs).cpu())
        self.same_top1.append((base_log_probs.argmax(-1) == log_probs.argmax(-1)).cpu())
        index = targets.unsqueeze(-1)
        reference_p = log_probs.gather(-1, index).squeeze(-1).exp()
        base_reference_p = base_log_probs.gather(-1, index).squeeze(-1).exp()
        self.delta_p.append((reference_p - base_reference_p).cpu())

    def summary(self) -> dict[str, dict[str, float] | float]:
        """The SPEC's figures: KLD mean/median/p99/max, share of same top-1, Δp mean/p1/p99."""
        # numpy: torch.quantile refuses inputs above 16M elements.
        kld = torch.cat(self.kld).double().numpy()
        delta_p = torch.cat(self.delta_p).double().numpy()
        return {
            "kld": {
                "mean": float(kld.mean()),
                "median": float(np.median(kld)),
                "p99": float(np.quantile(kld, 0.99)),
                "max": float(kld.max()),
                "tokens": int(kld.size),
            },
            "same_top1": float(torch.cat(self.same_top1).double().mean()),
            "delta_p": {
                "mean": float(delta_p.mean()),
                "p1": float(np.quantile(delta_p, 0.01)),
                "p99": float(np.quantile(delta_p, 0.99)),
            },
        }
