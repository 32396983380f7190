"""What a run leaves in its directory: `results.json` (the record), `report.md` and `junit.xml`.

`RunResult` is the single record of a run; the three files and the terminal table are renderings
of it. Each stage says whether it `ran` or was `cached`, which is how a re-run proves it
recomputed nothing without relying on timing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from compress.artifact import write_text_atomic
from compress.evaluate.compare import markdown_table
from compress.evaluate.compare import plot as save_plot
from compress.evaluate.results import EvalReport, junit_xml
from compress.version import __version__

RUN_SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
JUNIT_FILE = "junit.xml"
PLOT_FILE = "compare.png"
#: Every file a run writes into its directory beside the stages.
REPORT_FILES = (RESULTS_FILE, REPORT_FILE, JUNIT_FILE, PLOT_FILE)


class StageOutcome(BaseModel):
    """One stage of one run: where its artifact is, under which key, and whether it ran."""

    name: str
    summary: str
    input: str
    path: str
    key: str
    status: Literal["ran", "cached"]
    wall_s: float
    parameters: dict[str, Any]


class RunResult(BaseModel):
    """Everything a run did and measured (`results.json`)."""

    schema_version: int = RUN_SCHEMA_VERSION
    recipe: str
    recipe_file: str
    overrides: list[str]
    run_dir: str
    model: dict[str, Any]
    stages: list[StageOutcome]
    eval: EvalReport
    #: The comparison table's rows (baseline first), as `compress compare --format json` gives them.
    comparison: list[dict[str, Any]]
    problems: list[str] = Field(default_factory=list)
    tool_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @computed_field
    @property
    def passed(self) -> bool:
        return self.eval.passed

    def gate_outcomes(self) -> list[tuple[str, dict[str, Any]]]:
        """(stage, outcome) for every gate applied, in stage order."""
        return [(result.name, gate) for result in self.eval.results for gate in result.gates]


def report_markdown(result: RunResult) -> str:
    """`report.md`: the stages and their cache status, the comparison table, the gates, the verdict."""
    outcomes = result.gate_outcomes()
    failed = [f"{stage}: {gate['gate']}" for stage, gate in outcomes if not gate["passed"]]
    verdict = (
        f"**FAILED**: {len(failed)} of {len(outcomes)} gates ({'; '.join(failed)})"
        if failed
        else f"**passed**: {len(outcomes)} of {len(outcomes)} gates"
    )
    lines = [
        f"# compress run · {result.recipe}",
        "",
        f"Recipe `{result.recipe_file}`"
        + (f" with `--set {' --set '.join(result.overrides)}`" if result.overrides else "")
        + f" on `{result.model['reference']}` (sha256 `{result.model['sha256'][:16]}…`), "
        f"compress {result.tool_version}, {result.created}.",
        "",
        verdict,
        "",
        "## Stages",
        "",
        "| stage | does | input | status | key | wall s |",
        "|---|---|---|---|---|---:|",
        *(
            f"| {s.name} | {s.summary} | {s.input} | {s.status} | `{s.key[:12]}` | {s.wall_s:.1f} |"
            for s in result.stages
        ),
        "",
        f"## Results (suite `{result.eval.suite}`)",
        "",
        markdown_table(result.comparison),
        "",
        "## Gates",
        "",
        *(f"- {stage}: {gate['message']}" for stage, gate in outcomes),
        *(["- none"] if not outcomes else []),
        "",
    ]
    if result.problems:
        lines += ["## Problems", "", *(f"- {problem}" for problem in result.problems), ""]
    return "\n".join(lines)


def write_reports(result: RunResult, run_dir: Path, plot: bool = False) -> list[Path]:
    """Write the run's record and reports into `run_dir` (each file atomically); returns their paths."""
    files = {
        RESULTS_FILE: result.model_dump_json(indent=2) + "\n",
        REPORT_FILE: report_markdown(result),
        JUNIT_FILE: junit_xml(result.eval, title=f"compress run {result.recipe}"),
    }
    for name, text in files.items():
        write_text_atomic(run_dir / name, text)
    written = [run_dir / name for name in files]
    if plot:
        save_plot(result.comparison, run_dir / PLOT_FILE)
        written.append(run_dir / PLOT_FILE)
    return written
