"""`compress distill` with no subcommand: teacher generation, then student training.

Under `accelerate launch` only the main process generates; the others wait for it, then all train.
The generations go to `<work_dir>/generations` unless `generations` names a directory, and stay
there after training (the teacher's sampling is the expensive half: a second training run with
other settings reuses them, and an interrupted generation resumes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from compress.distill.config import DistillConfig, GenerateConfig, TrainConfig
from compress.distill.dataset import GENERATION_FILE
from compress.distill.generate import generate
from compress.distill.train import check_training_request, check_work_dir, default_work_dir, train
from compress.errors import CompressError
from compress.options import parse_options


def distill(
    teacher: str | Path,
    student: str | None = None,
    out: str | Path | None = None,
    *,
    generations: str | Path | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    resume: bool = False,
    work_dir: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Generate with `teacher`, then train `student` on it; returns the artifact path.

    `options` are the `DistillConfig` fields: those of `GenerateConfig` and of `TrainConfig`;
    `recipe` names the recipe stage that asked for it (recorded in the manifest).
    """
    config = parse_options(DistillConfig, options, none_is_unset=False)
    training = TrainConfig.model_validate(config.model_dump(include=set(TrainConfig.model_fields)))
    if training.teacher_logits == "offline" and training.kl_weight > 0 and not config.store_topk:
        raise CompressError("--teacher-logits offline needs the teacher's top-k stored: add --store-topk K")
    _, _, out_path, _ = check_training_request(teacher, student, out, training, force, trust_remote_code)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_path)
    check_work_dir(work)
    data = Path(generations) if generations is not None else work / "generations"
    if _process_rank() == 0:
        generate(
            teacher,
            data,
            force=force,
            trust_remote_code=trust_remote_code,
            command=command,
            **config.model_dump(include=set(GenerateConfig.model_fields)),
        )
    else:
        _wait_for_generations(data)
    return train(
        teacher,
        student,
        out_path,
        data=data,
        force=force,
        trust_remote_code=trust_remote_code,
        command=command,
        resume=resume,
        work_dir=work,
        recipe=recipe,
        **config.model_dump(include=set(TrainConfig.model_fields)),
    )


def _process_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def _wait_for_generations(data: Path, poll_s: float = 2.0) -> None:
    """Other processes wait while the main process generates (a failure there ends the whole launch)."""
    while True:
        try:
            if json.loads((data / GENERATION_FILE).read_text()).get("finished"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(poll_s)
