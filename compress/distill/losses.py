"""Knowledge-distillation losses: α·T²·KL(teacher ‖ student) + (1−α)·CE, per predicted token.

Position t's logits predict token t + 1, so every term is taken over positions whose next token is
real (not padding), averaged over those tokens. T² keeps the KL gradient's scale independent of the
temperature (Hinton et al., 2015), so α means the same at any T.

Offline distillation only has the teacher's top-k log-probabilities: the teacher distribution is
renormalised over those k tokens (at temperature T) and compared with the student's full-softmax
probabilities of the same tokens. That is the top-k truncation every offline KD pipeline makes; its
gradient pushes up exactly the tokens the teacher ranks highest.
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


def kl_topk(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T²·KL over the teacher's stored top-k tokens (offline distillation)."""
    length = student_logits.shape[1] - 1
    ids = topk_ids[:, :length]
    stored = topk_logprobs[:, :length].float().clamp(min=_MASKED)
    teacher = F.log_softmax(stored / temperature, dim=-1)
    student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1).gather(-1, ids)
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
