"""The typed requests of the two distillation stages, shared by the CLI, recipes and manifests.

`GenerateConfig` is how the teacher writes its dataset; `TrainConfig` is how the student learns
from it; `DistillConfig` is both (what `compress distill` with no subcommand and a recipe's
`distill` stage take). The CLI's flags map onto the fields one to one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.options import flag

Loss = Literal["kl", "ce", "kl+ce"]
DEFAULT_PROMPTS = "builtin:python-stdlib"
#: `student_config` keys and the pruning target each becomes (`compress.distill.student`).
STUDENT_CONFIG_KEYS = {
    "num_hidden_layers": "layers_keep",
    "hidden_size": "hidden_size",
    "intermediate_size": "mlp_size",
    "num_attention_heads": "heads_keep",
    "num_key_value_heads": None,  # follows from the head count (whole KV groups or per group)
}


def parse_student_config(text: str) -> dict[str, int]:
    """`num_hidden_layers=2,intermediate_size=172` → a dict (the command line's form)."""
    overrides: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not value.strip().isdigit():
            raise ValueError(f"takes key=integer pairs, not '{item}'")
        overrides[key.strip()] = int(value)
    return overrides


class GenerateConfig(BaseModel):
    """Teacher generation: which prompts, how to sample, what to store."""

    model_config = ConfigDict(extra="forbid")

    #: Each document is one prompt (or a span cut from it).
    prompts: str = Field(
        DEFAULT_PROMPTS, description="Prompt source, any data source (default builtin:python-stdlib)."
    )
    #: A span of this many tokens at a seeded offset; None (0 on the command line): the whole document.
    prompt_tokens: int | None = Field(64, ge=1, description="Cut each prompt to this many tokens (0: whole).")
    #: Prompts used: samples / samples_per_prompt, rounded up.
    samples: int = Field(512, ge=1, description="Teacher completions to generate.")
    samples_per_prompt: int = Field(1, ge=1, description="Completions per prompt.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens per completion.")
    do_sample: Annotated[bool, flag("--sample/--greedy")] = Field(
        True, description="Sample, or decode greedily."
    )
    sampling_temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1.0: off).")
    store_topk: int = Field(0, ge=0, description="Store the teacher's top-k log-probs (offline KD; 0: none).")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf, or vllm when installed.")
    generate_batch_size: int = Field(32, ge=1, description="Sequences per generate call.")
    #: An interrupted run resumes at the first unfinished shard.
    shard_size: int = Field(256, ge=1, description="Completions per shard (the resume unit).")
    seed: int = Field(0, description="Seed of sampling, data order and init.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, …")

    @field_validator("prompt_tokens", mode="before")
    @classmethod
    def _zero_is_whole(cls, value: Any) -> Any:
        return None if value == 0 else value

    @model_validator(mode="after")
    def _sampling_applies(self) -> GenerateConfig:
        """Greedy decoding reads no sampling option and gives one completion per prompt: a sampling
        option given with it would be recorded and change nothing (and several completions per
        prompt would fail in the middle of generation)."""
        if not self.do_sample:
            for name, default in (("sampling_temperature", 1.0), ("top_p", 1.0)):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"--{name.replace('_', '-')} has no effect with --greedy (one deterministic "
                        "completion per prompt); leave it out, or use --sample"
                    )
            if self.samples_per_prompt != 1:
                raise ValueError(
                    f"--samples-per-prompt {self.samples_per_prompt} needs --sample: greedy decoding "
                    "gives one completion per prompt"
                )
        return self


class TrainConfig(BaseModel):
    """Student training: the loss, the optimisation, checkpoints, and the final evaluation."""

    model_config = ConfigDict(extra="forbid")

    loss: Loss = Field("kl+ce", description="kl, ce or kl+ce.")
    #: loss = α·T²·KL + (1−α)·CE in `kl+ce`; `kl` is α=1 and `ce` α=0.
    alpha: float = Field(0.5, ge=0, le=1, description="KL weight in kl+ce.")
    temperature: float = Field(1.0, gt=0, description="Distillation temperature T.")
    #: online: a teacher forward on every batch (full vocabulary); offline: the stored top-k.
    teacher_logits: Literal["online", "offline"] = Field(
        "online", description="online (teacher forward) or offline (stored top-k)."
    )
    steps: int = Field(200, ge=1, description="Optimizer steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate, cosine schedule.")
    batch_size: int = Field(8, ge=1, description="Sequences per device per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_seq_len: int = Field(512, ge=2, description="Cut training sequences to this many tokens.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto (bf16 on CUDA that has it), no, bf16, fp16."
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps.")
    seed: int = Field(0, description="Seed of sampling, data order and init.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, …")
    #: Overrides of the teacher's config that define a student; on the command line `k=v,k=v`.
    student_config: dict[str, int] | None = Field(
        None,
        description="A student from the teacher's config, smaller: e.g. "
        "num_hidden_layers=2,intermediate_size=172.",
    )
    #: From the teacher's weights (every k-th block, widths pruned by magnitude) or at random.
    student_init: Literal["teacher", "random"] = Field(
        "teacher", description="--student-config start: teacher weights or random."
    )
    #: The harness run at the end: suite name or YAML path, optional eval text; False skips it.
    eval: bool = Field(True, description="Evaluate the student against the teacher at the end.")
    suite: str = Field("default", description="Eval suite for the final report.")
    eval_data: str | None = Field(None, description="Override the suite's eval text.")

    @field_validator("student_config", mode="before")
    @classmethod
    def _parse_student_config(cls, value: Any) -> Any:
        overrides = parse_student_config(value) if isinstance(value, str) else value
        if overrides is None:
            return None
        unknown = [key for key in overrides if key not in STUDENT_CONFIG_KEYS]
        if unknown:
            raise ValueError(f"does not know '{unknown[0]}'; use {', '.join(STUDENT_CONFIG_KEYS)}")
        if not overrides:
            raise ValueError("is empty; give e.g. num_hidden_layers=2")
        return overrides

    @property
    def kl_weight(self) -> float:
        """α in α·T²·KL + (1−α)·CE."""
        return {"kl": 1.0, "ce": 0.0}.get(self.loss, self.alpha)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """Refuse an option the chosen loss, student or evaluation does not read: it would be
        recorded in the manifest and change nothing (values are compared with the defaults, which
        the command line passes for every flag not given)."""
        if self.teacher_logits == "offline" and self.loss == "ce":
            raise ValueError(
                "--teacher-logits offline only matters for a KL loss; --loss ce needs no teacher"
            )
        if self.alpha != 0.5 and self.loss != "kl+ce":
            raise ValueError(
                f"--alpha weighs KL against CE in --loss kl+ce; --loss {self.loss} uses "
                f"{'KL' if self.loss == 'kl' else 'CE'} alone, so leave --alpha out"
            )
        if self.temperature != 1.0 and self.loss == "ce":
            raise ValueError("--temperature softens the KL term; --loss ce has none, so leave it out")
        if self.student_init != "teacher" and self.student_config is None:
            raise ValueError(
                "--student-init chooses how a --student-config student starts; without "
                "--student-config it has no effect, so leave it out"
            )
        if not self.eval:
            for name, given in (
                ("suite", self.suite != "default"),
                ("eval_data", self.eval_data is not None),
            ):
                if given:
                    raise ValueError(
                        f"--{name.replace('_', '-')} chooses the final evaluation, which --no-eval "
                        "skips; leave one of them out"
                    )
        return self

    def resume_key(self) -> dict[str, object]:
        """The parameters a checkpoint must share with the run that resumes it (not eval settings)."""
        return self.model_dump(exclude={"eval", "suite", "eval_data", "save_steps", "device"})


class DistillConfig(GenerateConfig, TrainConfig):
    """Both stages: `compress distill` without a subcommand, and a recipe's `distill` stage."""

    model_config = ConfigDict(extra="forbid")
