"""`prune` as a registered technique: the CLI command (with `--dry-run`), the recipe stage, the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.prune.config import PruneConfig
from compress.technique import RecipeData, Technique, calibration_defaults, library_runner, register


def _recipe_data(config: PruneConfig, data: RecipeData) -> dict[str, Any]:
    """The seed always (the random ranking uses it); calibration only when importance reads data."""
    return calibration_defaults(config, data) if config.needs_data else {"seed": data.seed}


def _report(path: Path) -> dict[str, Any]:
    from compress.artifact import read_manifest

    return read_manifest(path).extra["pruning"]


def _view(report: dict[str, Any]) -> Any:
    from compress.render import prune_report_view

    return prune_report_view(report)


def _plan(source: str, config: PruneConfig, trust_remote_code: bool) -> dict[str, Any]:
    from compress.prune.runner import plan

    return plan(source, trust_remote_code, **config.model_dump())


def _plan_view(planned: dict[str, Any]) -> Any:
    from compress.render import prune_plan_view

    return prune_plan_view(planned)


register(
    Technique(
        name="prune",
        config=PruneConfig,
        run=library_runner("compress.prune.runner:prune"),
        summary=lambda config: config.summary(),
        help="Structured pruning: remove heads, MLP channels, hidden channels or blocks; a smaller dense "
        "model.",
        recipe_data=_recipe_data,
        report=_report,
        view=_view,
        plan=_plan,
        plan_view=_plan_view,
        epilog="Examples:\n\n  compress prune ./my-model --heads 0.25 --mlp 0.3 --layers 2\n\n"
        "  compress prune ./my-model --mlp-size 4096 --layers-keep 20 --dry-run\n\n"
        "  compress prune ./my-model --hidden 0.2 --importance taylor --calib data.jsonl:text",
    )
)
