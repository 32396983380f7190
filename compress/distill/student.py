"""The student: an artifact (a pruned model, the main case), any model directory, or the teacher's
config with smaller sizes.

A config student starts from the teacher's weights by default: every k-th block (evenly spaced,
first and last kept) and widths cut by weight magnitude with the pruning surgery, the
initialisation that DistilBERT and Minitron found far better than random. `student_init=random`
gives the same shapes with fresh weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from compress.distill.config import STUDENT_CONFIG_KEYS, TrainConfig
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    load_config,
    load_model,
    load_tokenizer,
    reject_quantized,
    resolve_model,
    tokenizers_match,
)

TOKENIZER_PROBE = "def main():\n    print('Hello, world!')  # 1234 Once upon a time, there was a little dog."


@dataclass
class StudentSpec:
    """Which student, checked and described before anything heavy is loaded."""

    #: The manifest's record: kind (artifact, model, config), reference and fingerprint, overrides.
    description: dict[str, Any]
    source: ModelSource | None = None
    overrides: dict[str, int] | None = None


def check_tokenizer(teacher_tokenizer, source: ModelSource, trust_remote_code: bool) -> None:
    """Distillation compares logits token by token: the two vocabularies must be the same."""
    student_tokenizer = load_tokenizer(source, trust_remote_code)
    if not tokenizers_match(teacher_tokenizer, student_tokenizer, TOKENIZER_PROBE):
        raise CompressError(
            f"the student '{source.reference}' has a different tokenizer from the teacher's; "
            "distillation needs the same vocabulary"
        )


def _evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` block indices spread over `total`, first and last included (every k-th block)."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _prune_options(overrides: dict[str, int]) -> dict[str, int]:
    return {
        STUDENT_CONFIG_KEYS[key]: value
        for key, value in overrides.items()
        if STUDENT_CONFIG_KEYS[key] and key != "num_hidden_layers"
    }


def _from_teacher(
    teacher: ModelSource, overrides: dict[str, int], config: TrainConfig, trust_remote_code: bool
):
    from compress.prune.config import PruneConfig
    from compress.prune.cut import cut
    from compress.prune.importance import width_scores
    from compress.prune.plan import plan_sizes
    from compress.prune.surgery import remove_blocks

    model = load_model(teacher, "float32", "cpu", trust_remote_code, require_finite=True)
    sizes = plan_sizes(PruneConfig(**_prune_options(overrides), importance="magnitude"), model.config)
    cut(model, sizes, width_scores(model, "magnitude", None, sizes.width, config.seed))
    if "num_hidden_layers" in overrides:
        total = model.config.num_hidden_layers
        if not 1 <= overrides["num_hidden_layers"] <= total:
            raise CompressError(f"num_hidden_layers must lie in [1, {total}] (the teacher has {total})")
        kept = _evenly_spaced(total, overrides["num_hidden_layers"])
        remove_blocks(model, [index for index in range(total) if index not in kept])
    return model


def _student_sizes(teacher_config, overrides: dict[str, int]):
    """The student's sizes as a plan against the teacher's config: out-of-range values fail here."""
    from compress.prune.config import PruneConfig
    from compress.prune.plan import plan_sizes

    options = _prune_options(overrides)
    if "num_hidden_layers" in overrides:
        options["layers_keep"] = overrides["num_hidden_layers"]
    return plan_sizes(PruneConfig(**options, importance="random"), teacher_config)


def _at_random(teacher: ModelSource, overrides: dict[str, int], config: TrainConfig, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, set_seed

    from compress.prune.geometry import pruned_config

    teacher_config = load_config(teacher, trust_remote_code)
    sizes = _student_sizes(teacher_config, overrides)
    student_config = pruned_config(
        teacher_config,
        num_heads=sizes.num_heads,
        num_kv_heads=sizes.num_kv_heads,
        intermediate_size=sizes.intermediate_size,
        hidden_size=sizes.hidden_size,
        num_layers=sizes.num_layers,
    )
    set_seed(config.seed)
    return AutoModelForCausalLM.from_config(student_config, trust_remote_code=trust_remote_code)


def _check_kv_heads(model: nn.Module, overrides: dict[str, int]) -> None:
    wanted = overrides.get("num_key_value_heads")
    actual = getattr(model.config, "num_key_value_heads", None)
    if wanted is not None and wanted != actual:
        raise CompressError(
            f"num_key_value_heads={wanted} does not follow from the other sizes (they give {actual}); drop it"
        )


def student_spec(
    teacher: ModelSource,
    teacher_tokenizer,
    student: str | None,
    config: TrainConfig,
    trust_remote_code: bool = False,
) -> StudentSpec:
    """Resolve and check the student (its tokenizer, its config overrides) without loading weights."""
    if student is not None and config.student_config:
        raise CompressError("give --student or --student-config, not both")
    if student is None and not config.student_config:
        raise CompressError("give a student: --student MODEL (e.g. a pruned artifact) or --student-config")
    if student is not None:
        source = resolve_model(student)
        reject_quantized(source, trust_remote_code)
        check_tokenizer(teacher_tokenizer, source, trust_remote_code)
        kind = "artifact" if source.is_artifact else "model"
        return StudentSpec({"kind": kind, "reference": source.reference, "sha256": source.sha256}, source)
    overrides = dict(config.student_config or {})
    _student_sizes(load_config(teacher, trust_remote_code), overrides)
    description = {
        "kind": "config",
        "overrides": overrides,
        "init": config.student_init,
        "teacher": teacher.reference,
    }
    return StudentSpec(description, overrides=overrides)


def load_student(
    spec: StudentSpec, teacher: ModelSource, config: TrainConfig, trust_remote_code: bool = False
) -> nn.Module:
    """The student model in float32 on the CPU (the trainer moves it)."""
    if spec.source is not None:
        return load_model(spec.source, "float32", "cpu", trust_remote_code, require_finite=True)
    build = _from_teacher if config.student_init == "teacher" else _at_random
    model = build(teacher, spec.overrides, config, trust_remote_code)
    _check_kv_heads(model, spec.overrides)
    return model
