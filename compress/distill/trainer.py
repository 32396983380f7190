"""transformers' Trainer with a distillation loss, and a live loss display.

Building on Trainer is what makes `accelerate launch` (DDP, FSDP), gradient accumulation, mixed
precision, checkpoints with optimizer and scheduler state, and exact resume work without code of
our own. The teacher is not wrapped or sharded: it runs in eval mode beside each process's student.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from compress import console
from compress.distill.losses import distillation_loss


class DistillationTrainer(Trainer):
    """`compute_loss` = α·T²·KL(teacher ‖ student) + (1−α)·CE, with the teacher online or stored top-k."""

    def __init__(self, *args: Any, teacher=None, kl_weight: float, temperature: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Each micro-batch loss is a token mean; Trainer then divides by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher.to(self.args.device).eval() if teacher is not None else None
        self.kl_weight = kl_weight
        self.temperature = temperature
        self._sums = {"kl": 0.0, "ce": 0.0, "batches": 0, "tokens": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        topk = (inputs.pop("topk_ids"), inputs.pop("topk_logprobs")) if "topk_ids" in inputs else None
        outputs = model(**inputs)
        teacher_logits = None
        if self.teacher is not None and self.kl_weight > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
        parts = distillation_loss(
            outputs.logits, labels, self.kl_weight, self.temperature, teacher_logits, topk
        )
        self._sums["kl"] += parts.kl.item()
        self._sums["ce"] += parts.ce.item()
        self._sums["batches"] += 1
        self._sums["tokens"] += int(inputs["attention_mask"].sum())
        return (parts.total, outputs) if return_outputs else parts.total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the KL and CE parts (means since the last log) to Trainer's logged loss."""
        if self._sums["batches"] and "loss" in logs:
            logs["kl"] = round(self._sums["kl"] / self._sums["batches"], 5)
            logs["ce"] = round(self._sums["ce"] / self._sums["batches"], 5)
            logs["tokens"] = self._sums["tokens"]
            self._sums.update(kl=0.0, ce=0.0, batches=0, tokens=0)
        super().log(logs, start_time)


class LiveLoss(TrainerCallback):
    """A rich progress bar with the running loss, its parts, the learning rate and tokens/s; it also
    keeps the logged history for the manifest. Only the main process draws."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._bar = None
        self._task = None
        self._tokens = 0
        self._started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._bar = console.progress()
            self._bar.start()
            self._task = self._bar.add_task(
                "distill", total=state.max_steps, completed=state.global_step, status=""
            )
            self._started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.history.append({"step": state.global_step, **{k: v for k, v in logs.items() if k != "tokens"}})
        self._tokens += logs.get("tokens", 0) * args.world_size
        if self._bar is not None:
            rate = self._tokens / max(time.perf_counter() - self._started, 1e-9)
            parts = f" (kl {logs['kl']:.4f} · ce {logs['ce']:.4f})" if "kl" in logs else ""
            self._bar.update(
                self._task,
                status=f"loss {logs['loss']:.4f}{parts} · lr {logs.get('learning_rate', 0):.2e}"
                f" · {rate:,.0f} tok/s",
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
