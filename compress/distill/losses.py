"""Knowledge-distillation losses: α·T²·KL(teacher ‖ student) + (1−α)·CE, per predicted token.

Position t's logits predict token t + 1, so every term is taken over positions whose next token is
real (not padding), averaged over those tokens. T² keeps the KL gradient's scale independent of the
temperature (Hinton et al., 2015), so α means the same at any T.

Offline distillation only has the teacher's top-k log-probabilities. Both distributions are taken
over k + 1 outcomes: the k stored tokens and one bucket for the rest of the vocabulary, whose
teacher mass is what the top k leave (the stored values are true log-probabilities) and whose
student mass is its full-softmax probability outside them. Renormalising the teacher over the k
tokens alone, the usual truncation, tells the student the tail is empty: it over-sharpens, and on
the demo model 30 steps of it lowered the full-vocabulary KLD less than plain cross-entropy did.
With the bucket the loss is the KL of the two distributions coarsened to those k + 1 outcomes,
exact at T = 1 (at other T the bucket is tempered as if it were one token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.distill.dataset import IGNORE_INDEX

_MASKED = -1e4  # stands in for -inf in padded top-k slots: softmax gives them ~0 without NaNs


@dataclass
class LossParts:
    total: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def _next_token_mask(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, 1:] != IGNORE_INDEX


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the sequence itself (the teacher's text)."""
    logits = student_logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def kl_full(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T²·KL(teacher ‖ student) over the whole vocabulary (online distillation)."""
    student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return _masked_mean(per_token, _next_token_mask(labels)) * temperature**2


def _with_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """Append log(1 − Σ exp(log_probs)), the mass outside the given tokens, as one more outcome.

    A rest below 1e-6 (the tokens hold everything, up to float32 rounding) is _MASKED, ~0
    probability rather than −inf or a rounding error; the log uses expm1/log1p where each is accurate.
    """
    inside = torch.logsumexp(log_probs, dim=-1, keepdim=True)
    bounded = inside.clamp(max=-1e-6)
    rest = torch.where(bounded > -0.6931, torch.log(-torch.expm1(bounded)), torch.log1p(-bounded.exp()))
    rest = torch.where(inside > -1e-6, torch.full_like(rest, _MASKED), rest.clamp(min=_MASKED))
    return torch.cat([log_probs, rest], dim=-1)


def kl_topk(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T²·KL over the teacher's stored top-k tokens plus the rest of the vocabulary as one outcome
    (offline distillation)."""
    length = student_logits.shape[1] - 1
    ids = topk_ids[:, :length]
    stored = topk_logprobs[:, :length].float().clamp(min=_MASKED)
    teacher = F.log_softmax(_with_rest(stored) / temperature, dim=-1)
    student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1).gather(-1, ids)
    student = _with_rest(student)
    per_token = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return _masked_mean(per_token, _next_token_mask(labels)) * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    kl_weight: float,
    temperature: float,
    teacher_logits: torch.Tensor | None = None,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LossParts:
    """The combined loss and its parts (for the live display); KL is skipped when α = 0."""
    ce = cross_entropy(student_logits, labels)
    if kl_weight == 0:
        kl = torch.zeros((), device=ce.device)
    elif topk is not None:
        kl = kl_topk(student_logits, *topk, labels, temperature)
    elif teacher_logits is not None:
        kl = kl_full(student_logits, teacher_logits, labels, temperature)
    else:
        raise ValueError("a KL loss needs teacher logits or the stored top-k")
    return LossParts(kl_weight * kl + (1 - kl_weight) * ce, kl, ce)
