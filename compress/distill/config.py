"""The typed requests of the two distillation stages, shared by the CLI, recipes and manifests.

`GenerateConfig` is how the teacher writes its dataset; `TrainConfig` is how the student learns
from it; `DistillConfig` is both (what `compress distill` with no subcommand and a recipe's
`distill` stage take). The CLI's flags map onto the fields one to one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Loss = Literal["kl", "ce", "kl+ce"]
DEFAULT_PROMPTS = "builtin:python-stdlib"


class GenerateConfig(BaseModel):
    """Teacher generation: which prompts, how to sample, what to store."""

    model_config = ConfigDict(extra="forbid")

    #: Any data source of `compress data`; each document is one prompt (or a span cut from it).
    prompts: str = DEFAULT_PROMPTS
    #: Cut each prompt to a span of this many tokens at a seeded offset; None: the whole document.
    prompt_tokens: int | None = Field(64, ge=1)
    #: Completions to generate in all (prompts used: samples / samples_per_prompt, rounded up).
    samples: int = Field(512, ge=1)
    samples_per_prompt: int = Field(1, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = True
    sampling_temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    #: Store the teacher's top-k log-probabilities at every position (0: none; needed for offline KD).
    store_topk: int = Field(0, ge=0)
    engine: Literal["hf", "vllm"] = "hf"
    generate_batch_size: int = Field(32, ge=1)
    #: Completions per shard on disk; an interrupted run resumes at the first unfinished shard.
    shard_size: int = Field(256, ge=1)
    seed: int = 0
    device: str = "auto"


class TrainConfig(BaseModel):
    """Student training: the loss, the optimisation, checkpoints, and the final evaluation."""

    model_config = ConfigDict(extra="forbid")

    loss: Loss = "kl+ce"
    #: Weight of the KL term in `kl+ce` (loss = α·T²·KL + (1−α)·CE); `kl` is α=1 and `ce` α=0.
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    #: online: a teacher forward on every batch (full vocabulary); offline: the stored top-k.
    teacher_logits: Literal["online", "offline"] = "online"
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_len: int = Field(512, ge=2)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    save_steps: int = Field(50, ge=1)
    seed: int = 0
    device: str = "auto"
    #: Overrides of the teacher's config that define a student (num_hidden_layers, hidden_size, …).
    student_config: dict[str, int] | None = None
    #: How a `student_config` student starts: from the teacher's weights (every k-th block, widths
    #: pruned by magnitude) or at random.
    student_init: Literal["teacher", "random"] = "teacher"
    #: The harness run at the end: suite name or YAML path, optional eval text; False skips it.
    eval: bool = True
    suite: str = "default"
    eval_data: str | None = None

    @property
    def kl_weight(self) -> float:
        """α in α·T²·KL + (1−α)·CE."""
        return {"kl": 1.0, "ce": 0.0}.get(self.loss, self.alpha)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.teacher_logits == "offline" and self.loss == "ce":
            raise ValueError(
                "--teacher-logits offline only matters for a KL loss; --loss ce needs no teacher"
            )
        return self

    def resume_key(self) -> dict[str, object]:
        """The parameters a checkpoint must share with the run that resumes it (not eval settings)."""
        return self.model_dump(exclude={"eval", "suite", "eval_data", "save_steps", "device"})


class DistillConfig(GenerateConfig, TrainConfig):
    """Both stages: `compress distill` without a subcommand, and a recipe's `distill` stage."""

    model_config = ConfigDict(extra="forbid")
