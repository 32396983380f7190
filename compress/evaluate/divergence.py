"""Token-level divergence between a baseline's and an artifact's next-token distributions.

The artifact's side is always log-probabilities over the full vocabulary, [positions, vocab], in
fp32. The baseline's is either the same (a full store) or its `TopK` summary: the K most probable
tokens per position with their log-probs, plus the argmax and the reference token's log-prob,
which keep `same_top1` and `delta_p` exact while the store stops growing with the vocabulary.
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


@dataclass(frozen=True)
class TopK:
    """A baseline's next-token distribution at each position, reduced to what divergence needs:
    its K most probable tokens, a sample of the rest (the tail), and exact argmax and reference."""

    index: torch.Tensor  # [positions, K] the K most probable tokens, most probable first
    log_probs: torch.Tensor  # [positions, K] their log-probabilities (fp32)
    argmax: torch.Tensor  # [positions] the most probable token (exact, ties as `argmax` breaks them)
    target_log_prob: torch.Tensor  # [positions] log-probability of the reference token
    tail_log_mass: torch.Tensor  # [positions] log of the probability outside the top K
    tail_index: torch.Tensor  # [positions, M] tokens drawn from the tail, in proportion to P
    tail_log_probs: torch.Tensor  # [positions, M] their log-probabilities

    @classmethod
    def of(
        cls,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        k: int,
        tail_samples: int = 0,
        offsets: torch.Tensor | None = None,
    ) -> TopK:
        """Summarize full log-probs [positions, vocab]. `tail_samples` tokens per position are
        drawn from P restricted to the tokens outside the top K by systematic sampling: the tail,
        in decreasing probability, is cut into `tail_samples` equal shares of its mass and one
        token is taken at the same random offset in each share (`offsets` [positions, 1], uniform
        in [0, 1); drawn here when not given), which keeps the estimate unbiased with far less
        variance than independent draws."""
        ordered, order = log_probs.sort(dim=-1, descending=True)
        k = min(k, log_probs.shape[-1])
        index, values = order[:, :k], ordered[:, :k]
        tail = ordered[:, k:]
        if tail.shape[-1]:
            tail_log_mass = torch.logsumexp(tail, dim=-1)
        else:
            tail_log_mass = torch.full_like(values[:, 0], float("-inf"))
        tail_index = index.new_zeros(index.shape[0], tail_samples)
        if tail_samples and tail.shape[-1]:
            cumulative = (tail - tail_log_mass.unsqueeze(-1)).exp().cumsum(dim=-1)
            offset = (offsets if offsets is not None else torch.rand(index.shape[0], 1)).to(log_probs.device)
            shares = (torch.arange(tail_samples, device=log_probs.device) + offset) / tail_samples
            position = torch.searchsorted(cumulative, shares).clamp(max=tail.shape[-1] - 1)
            tail_index = order[:, k:].gather(-1, position)
        target = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return cls(
            index,
            values,
            log_probs.argmax(-1),
            target,
            tail_log_mass,
            tail_index,
            log_probs.gather(-1, tail_index),
        )


def topk_kl_divergence(base: TopK, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per position: exact over the baseline's top K tokens, plus the tail's share.

    The tail's share is P(tail) times the mean of log P − log Q over the tokens drawn from the
    tail in proportion to P: an unbiased estimate of Σ_tail P·(log P − log Q), so the mean KLD over
    many positions is unbiased (docs/metrics.md measures its error for K and M). Without samples
    the tail is one bucket, P(tail)·(log P(tail) − log Q(tail)), a lower bound (log-sum inequality).
    Either way the value is exact when the top K hold all of P.
    """
    q_head = log_probs.gather(-1, base.index)
    head = (base.log_probs.exp() * (base.log_probs - q_head)).sum(dim=-1)
    p_tail = base.tail_log_mass.exp()
    if base.tail_index.shape[-1]:
        q_samples = log_probs.gather(-1, base.tail_index)
        tail = p_tail * (base.tail_log_probs - q_samples).mean(dim=-1)
    else:
        q_tail = torch.logsumexp(log_probs.scatter(-1, base.index, float("-inf")), dim=-1)
        tail = p_tail * (base.tail_log_mass - q_tail)
    return head + torch.where(p_tail > 0, tail, torch.zeros_like(tail))


@dataclass
class DivergenceAccumulator:
    """Per-token KLD, top-1 agreement and Δp of the reference token, gathered window by window."""

    kld: list[torch.Tensor] = field(default_factory=list)
    same_top1: list[torch.Tensor] = field(default_factory=list)
    delta_p: list[torch.Tensor] = field(default_factory=list)

    def add(self, base: torch.Tensor | TopK, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """One window: the baseline's log-probs [positions, vocab] or their `TopK`, the artifact's
        log-probs [positions, vocab], and the reference tokens [positions]."""
        if not isinstance(base, TopK):
            self.kld.append(kl_divergence(base, log_probs).cpu())
            base = TopK.of(base, targets, 1)  # argmax and reference, as a top-K store keeps them
        else:
            self.kld.append(topk_kl_divergence(base, log_probs).cpu())
        self.same_top1.append((base.argmax == log_probs.argmax(-1)).cpu())
        reference_p = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).exp()
        self.delta_p.append((reference_p - base.target_log_prob.exp()).cpu())

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
