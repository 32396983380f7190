"""The end-of-training verdict: teacher, student before and after, scored by the shared harness.

The headline number is the share of the gap recovered: how much of the perplexity the student lost
against the teacher (by pruning, say) training won back, (before − after) / (before − teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from compress.distill.config import TrainConfig
from compress.errors import CompressError
from compress.modeling import ModelSource


def gap_recovered(teacher: float, before: float, after: float) -> float | None:
    """Share of the student's perplexity gap to the teacher that training closed (None: no gap)."""
    gap = before - teacher
    return (before - after) / gap if gap > 0 else None


def _scores(result) -> dict[str, Any]:
    metrics = result.metrics
    return {
        "ppl": metrics.get("ppl", {}).get("value"),
        "kld_mean": metrics.get("kld", {}).get("mean"),
        "same_top1": metrics.get("same_top1"),
    }


def distillation_suite(config: TrainConfig):
    """The suite the final report scores with (ppl and KLD only), its data checked to be readable:
    called before training too, so that offline hub data fails the command before the work."""
    from compress.data import check_readable
    from compress.evaluate.suite import load_suite

    suite = load_suite(config.suite)
    # ppl and KLD only: the suite's own gates (on speed, tasks, …) judge `compress eval`, not this report.
    overrides: dict[str, Any] = {"metrics": ["ppl", "kld"], "tasks": [], "gates": []}
    if config.eval_data is not None:
        overrides["data"] = config.eval_data
    suite = suite.model_copy(update=overrides).check()
    try:
        check_readable(suite.data)
    except CompressError as exc:
        raise CompressError(
            f"the final report's data: {exc} (or pass --eval-data FILE, or --no-eval)"
        ) from exc
    return suite


def evaluate_distillation(
    teacher: ModelSource, initial: Path | None, student: Path, config: TrainConfig
) -> dict:
    """Perplexity and KLD against the teacher of the untrained and trained student (ppl and kld only:
    speed and tasks are the eval command's job)."""
    from compress.evaluate.harness import EvalRequest, evaluate

    suite = distillation_suite(config)
    artifacts = [str(initial)] if initial is not None else []
    report, problems = evaluate(EvalRequest([*artifacts, str(student)], suite, baseline=str(teacher.path)))
    if problems:
        raise CompressError(problems[0])
    summary = {"suite": suite.name, "data": suite.data, "teacher": _scores(report.baseline)}
    if initial is not None:
        summary["before"] = _scores(report.results[0])
    summary["after"] = _scores(report.results[-1])
    if "before" in summary and None not in (summary["teacher"]["ppl"], summary["before"]["ppl"]):
        summary["gap_recovered"] = gap_recovered(
            summary["teacher"]["ppl"], summary["before"]["ppl"], summary["after"]["ppl"]
        )
    return summary


def distillation_view(report: dict[str, Any]) -> Table | str:
    """The terminal summary: steps and loss, then teacher / before / after with the gap recovered."""
    headline = f"distillation · {report['steps']} steps · final train loss {report['train_loss']:.4f}"
    evaluation = report.get("evaluation")
    if not evaluation:
        return headline
    table = Table(title=headline)
    for column in ("model", "ppl", "KLD to teacher", "same top-1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, key in (("teacher", "teacher"), ("student before", "before"), ("student after", "after")):
        scores = evaluation.get(key)
        if scores:
            table.add_row(label, *(_format(scores.get(k)) for k in ("ppl", "kld_mean", "same_top1")))
    if (recovered := evaluation.get("gap_recovered")) is not None:
        table.caption = f"perplexity gap recovered: {recovered:.1%}"
    return table


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
