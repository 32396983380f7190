"""`distill` as a registered technique: the recipe stage and the pipeline's runner.

Its command line is written in `compress.cli` (a group with `generate` and `train` subcommands), so
the registration asks for no generated command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from compress.distill.config import DistillConfig
from compress.technique import RECIPE_BASE, RecipeData, RunContext, Technique, register


class DistillStage(DistillConfig):
    """A recipe's `distill:` options: the student is the stage's input; the teacher is the recipe's
    model (`base`) or an earlier stage."""

    teacher: str = Field(RECIPE_BASE, description="The teacher: base or an earlier stage.")


def _run(source: str | Path, config: DistillStage, out: Path | None, context: RunContext) -> Path:
    from compress.distill.runner import distill

    return distill(
        context.models.get("teacher", config.teacher),
        str(source),
        out,
        force=context.force,
        trust_remote_code=context.trust_remote_code,
        command=context.command,
        resume=context.resume,
        recipe=context.recipe,
        **config.model_dump(exclude={"teacher"}),
    )


def _recipe_data(config: DistillStage, data: RecipeData) -> dict[str, Any]:
    """Prompts from the recipe's calibration text; no evaluation of its own (the recipe's eval scores it)."""
    return {"prompts": data.calib, "seed": data.seed, "eval": False}


register(
    Technique(
        name="distill",
        config=DistillStage,
        run=_run,
        summary=lambda config: f"distill from {config.teacher}",
        help="Distill a teacher into a student: generate, then train.",
        recipe_data=_recipe_data,
        model_fields=("teacher",),
        command=False,
    )
)
