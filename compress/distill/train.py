"""`compress distill train`: fit a student to the teacher on its generations, then score it.

Checkpoints (Trainer's own: weights, optimizer, scheduler, RNG) live in a work directory beside the
output, `<out>.work/checkpoints`, with `run.json` recording what the run was. `--resume` continues
from the last checkpoint only when that record matches, so a resumed run is the run it claims to
be. The artifact is written once, at the end, through a staging directory; the checkpoints are
removed after it is published.

Under `accelerate launch` every process runs this function; the main process alone writes the
work record, the artifact and the evaluation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compress import console
from compress.artifact import (
    DENSE_FORMAT,
    Manifest,
    api_call,
    new_manifest,
    publish,
    save_model_files,
    write_text_atomic,
)
from compress.distill.config import TrainConfig
from compress.distill.dataset import DistillCollator, dataset_fingerprint, load_generations
from compress.distill.student import StudentSpec, load_student, student_spec
from compress.distill.trainer import DistillationTrainer, LiveLoss
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    load_config,
    load_model,
    load_tokenizer,
    reject_quantized,
    resolve_device,
    resolve_model,
    stored_dtype,
)
from compress.options import parse_options
from compress.ownership import check_output_dir, check_workspace, command_inputs, data_paths
from compress.staging import staged_directory
from compress.telemetry import PhaseTimer

RUN_RECORD = "run.json"
CHECKPOINTS, INITIAL, FINAL = "checkpoints", "initial", "final"


def default_output(student: str | None, teacher: ModelSource) -> Path:
    name = Path((student or teacher.reference).rstrip("/")).name or "model"
    return Path("compressed") / f"{name}-distilled"


def default_work_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.work"


def _precision(config: TrainConfig, device: torch.device) -> dict[str, bool]:
    """Trainer's bf16/fp16 flags: bf16 on CUDA devices that have it when `auto`; CPUs train in float32."""
    wanted = config.mixed_precision
    if wanted == "auto":
        wanted = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if wanted != "no" and device.type != "cuda":
        raise CompressError(f"--mixed-precision {wanted} needs a CUDA device; this run is on {device}")
    return {"bf16": wanted == "bf16", "fp16": wanted == "fp16"}


def _training_arguments(config: TrainConfig, checkpoints: Path):
    from transformers import TrainingArguments

    device = resolve_device(config.device)
    return TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        logging_steps=max(1, min(10, config.steps // 20)),
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device.type == "cpu",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        log_level="warning",
        **_precision(config, device),
    )


def _first_difference(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> str:
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            if found := _first_difference(old, new, f"{prefix}{key}."):
                return found
        elif old != new:
            return f"{prefix}{key}={old!r}, not {new!r}"
    return ""


def _last_checkpoint(checkpoints: Path) -> tuple[str | None, list[str]]:
    """The newest *complete* `checkpoint-N`, and the newer ones skipped as incomplete.

    Trainer writes `trainer_state.json` after the weights and optimizer, so a kill during a save
    leaves a directory without it.
    """
    if not checkpoints.is_dir():
        return None, []
    numbered = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    skipped: list[str] = []
    for candidate in sorted(numbered, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (candidate / "trainer_state.json").is_file():
            return str(candidate), skipped
        skipped.append(candidate.name)
    return None, skipped


def _say_skipped(incomplete: list[str]) -> None:
    for name in incomplete:
        console.notice(f"skipping {name}: it was not completely written (the run was stopped)")


#: What a distillation keeps in its work directory (`OUT.work`); the generations come from `distill`.
WORK_ENTRIES = (CHECKPOINTS, INITIAL, FINAL, RUN_RECORD, "generations")


def check_work_dir(work: Path) -> None:
    """The work directory holds only a distillation's own entries: a user's folder that happens to be
    named `OUT.work` is refused, since starting over removes checkpoints from it."""
    check_workspace(
        work,
        (),
        lambda path: path.name in WORK_ENTRIES or path.name.startswith(f".{RUN_RECORD}.tmp-"),
        what="the work directory",
    )


def _prepare_work_dir(
    work: Path, record: dict[str, Any], resume: bool, force: bool, is_main: bool
) -> str | None:
    """The checkpoint to resume from (None: start fresh), after checking it belongs to this run.

    `--force` starts over where the checkpoints cannot be resumed; without it that is an error.
    """
    check_work_dir(work)
    last, incomplete = _last_checkpoint(work / CHECKPOINTS)
    if last is not None and not resume:
        if not force:
            raise CompressError(
                f"'{work}' holds checkpoints of an earlier run; "
                "pass --resume to continue it or --force to start over"
            )
        last = None
    if last is not None:
        try:
            recorded = json.loads((work / RUN_RECORD).read_text())
        except (OSError, ValueError):
            recorded = {}
        if recorded != record:
            difference = _first_difference(recorded, record) or "an unreadable run record"
            if not force:
                raise CompressError(f"--resume: the checkpoints in '{work}' were made with {difference}")
            console.notice(f"--force: starting over; the checkpoints in '{work}' were made with {difference}")
            last = None
        else:
            _say_skipped(incomplete)
            console.notice(f"resuming from {last}")
    elif resume and incomplete:  # a fresh directory with --resume is a normal start (recipes resume)
        _say_skipped(incomplete)
        console.notice(f"--resume: no complete checkpoint in '{work}'; starting from step 0")
    if is_main and last is None:
        for stale in (CHECKPOINTS, INITIAL, FINAL):  # generations stay: they do not depend on training
            shutil.rmtree(work / stale, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        write_text_atomic(work / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True))
    return last


def _check_data(dataset, config: TrainConfig, vocabulary: int) -> None:
    if config.teacher_logits == "offline" and config.kl_weight > 0 and "topk_ids" not in dataset.column_names:
        raise CompressError("--teacher-logits offline needs generations made with --store-topk K")
    largest = max(max(ids) for ids in dataset["input_ids"] if ids)
    if largest >= vocabulary:
        raise CompressError(
            f"the generations hold token id {largest}, outside the student's {vocabulary} tokens"
        )


def _initial_student_path(spec: StudentSpec, model, work: Path, tokenizer_dir: Path) -> Path:
    """Where the untrained student can be scored: its own directory, or a copy in the work dir."""
    if spec.source is not None:
        return spec.source.path
    path = work / INITIAL
    if not (path / "config.json").is_file():
        save_model_files(model, tokenizer_dir, path)
    return path


def _publish(
    final: Path,
    out: Path,
    force: bool,
    inputs: tuple[Path, ...],
    manifest: Manifest,
    tokenizer_dir: Path,
    dtype: torch.dtype,
    evaluation: Callable[[Path], dict[str, Any]] | None,
) -> None:
    """Reload Trainer's saved weights in the stored dtype and write the artifact (safetensors only).

    `evaluation` scores the student where it is being written, before the manifest, so its
    results go into the manifest once (the harness adds `eval.json` beside the weights, which the
    artifact keeps) and nothing rewrites the published artifact afterwards.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final, dtype=dtype, use_safetensors=True)
    with staged_directory(out, force, inputs=inputs) as staging:
        save_model_files(model, tokenizer_dir, staging)
        if evaluation is not None:
            manifest.extra["distillation"]["evaluation"] = evaluation(staging)
        publish(staging, manifest, model, dtype=dtype)


def _inputs(
    teacher: ModelSource, spec: StudentSpec, config: TrainConfig, data: object = None
) -> tuple[Path, ...]:
    """What a training run reads, which its output may not be, contain or lie inside."""
    student = (spec.source,) if spec.source is not None else ()
    return command_inputs(teacher, *student, options=config) + data_paths(data)


def check_training_request(
    teacher: str | Path,
    student: str | None,
    out: str | Path | None,
    config: TrainConfig,
    force: bool = False,
    trust_remote_code: bool = False,
) -> tuple[ModelSource, Any, Path, StudentSpec]:
    """Every check of a training request that needs no generations, so `compress distill` makes
    them before the teacher generates (minutes of work): the teacher, the output path, the student
    (given once, tokenizer equal to the teacher's, config overrides in range) and the final
    report's data. Returns the teacher, its tokenizer, the output path and the student."""
    teacher_source = resolve_model(teacher)
    reject_quantized(teacher_source, trust_remote_code)
    teacher_tokenizer = load_tokenizer(teacher_source, trust_remote_code)
    out_path = Path(out) if out is not None else default_output(student, teacher_source)
    spec = student_spec(teacher_source, teacher_tokenizer, student, config, trust_remote_code)
    check_output_dir(out_path, force, _inputs(teacher_source, spec, config))
    if config.eval:
        from compress.distill.report import distillation_suite

        distillation_suite(config)
    return teacher_source, teacher_tokenizer, out_path, spec


def train(
    teacher: str | Path,
    student: str | None = None,
    out: str | Path | None = None,
    *,
    data: str | Path,
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    resume: bool = False,
    work_dir: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Train `student` on the generations in `data` against `teacher`; returns the artifact path.

    `options` are the `TrainConfig` fields (loss, alpha, temperature, steps, lr, student_config, …);
    `recipe` names the recipe stage that asked for it. The training and evaluation report is the
    manifest's `extra["distillation"]`.
    """
    config = parse_options(TrainConfig, options, none_is_unset=False)
    request = check_training_request(teacher, student, out, config, force, trust_remote_code)
    teacher_source, teacher_tokenizer, out_path, spec = request
    dataset, meta = load_generations(data)
    _check_data(dataset, config, len(teacher_tokenizer))
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_path)
    record = {
        "train": config.resume_key(),
        "teacher": teacher_source.sha256,
        "student": spec.description,
        "data": dataset_fingerprint(meta),
    }
    args = _training_arguments(config, work / CHECKPOINTS)  # sets up the process group under accelerate
    with args.main_process_first(desc="checking the work directory"):
        checkpoint = _prepare_work_dir(work, record, resume, force, args.process_index == 0)
    timer = PhaseTimer()
    with timer.phase("student"):
        model = load_student(spec, teacher_source, config, trust_remote_code)
    tokenizer_dir = spec.source.path if spec.source is not None else teacher_source.path
    is_main = args.process_index == 0
    initial = _initial_student_path(spec, model, work, tokenizer_dir) if is_main and config.eval else None

    online = config.kl_weight > 0 and config.teacher_logits == "online"
    teacher_model = (
        load_model(teacher_source, "float32", "cpu", trust_remote_code, require_finite=True)
        if online
        else None
    )
    pad = teacher_tokenizer.pad_token_id
    collator = DistillCollator(
        pad if pad is not None else 0, config.max_seq_len, config.teacher_logits == "offline"
    )
    live = LiveLoss()
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[live],
        teacher=teacher_model,
        kl_weight=config.kl_weight,
        temperature=config.temperature,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the live display replaces printed log dicts
    with timer.phase("train"):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    final = work / FINAL
    trainer.save_model(str(final))  # every process: FSDP gathers the full weights here
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return out_path

    report = {
        "steps": trainer.state.global_step,
        "resumed_from": Path(checkpoint).name if checkpoint else None,
        "train_loss": round(result.training_loss, 6),
        "world_size": args.world_size,
        "effective_batch": config.batch_size * config.grad_accum * args.world_size,
        "history": live.history,
        "student": spec.description,
        "teacher": {"reference": teacher_source.reference, "sha256": teacher_source.sha256},
        "data": {"path": str(data), "samples": len(dataset), "sha256": dataset_fingerprint(meta)},
    }
    dtype = stored_dtype(load_config(spec.source or teacher_source, trust_remote_code))
    manifest = new_manifest(
        method="distill",
        config=config,
        source=spec.source or teacher_source,
        command=command or api_call("distill.train", teacher, student, out_path, data=str(data), **options),
        recipe=recipe,
        format=DENSE_FORMAT,
        phases=timer.as_dicts(),
        device=args.device,
        seed=config.seed,
        extra={"distillation": report},
    )
    evaluation = None
    if config.eval:
        from compress.distill.report import evaluate_distillation

        def evaluation(student_dir: Path) -> dict[str, Any]:
            return evaluate_distillation(teacher_source, initial, student_dir, config)

    inputs = _inputs(teacher_source, spec, config, data)
    _publish(final, out_path, force, inputs, manifest, tokenizer_dir, dtype, evaluation)
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    return out_path
