"""Run a recipe: each stage from its input into `<run_dir>/<stage>/`, reused when its key matches;
then the eval harness on every stage's artifact, the gates, the comparison and the reports.

Stages write through the techniques' own runners, which build in `DIR.tmp-*` and rename at the
end with the manifest written last. So a killed run leaves at most a staging directory (removed
by the next write to the same stage) and never a half artifact; the re-run skips every stage
whose complete artifact carries the same key, restarts the interrupted one, and resumes a
distillation from its checkpoints in `<stage>.work`.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compress import console
from compress.data import check_readable
from compress.evaluate.compare import comparison_rows, sort_rows
from compress.evaluate.gates import check_gate, parse_gate
from compress.evaluate.harness import EvalRequest, check_device, evaluate
from compress.evaluate.results import EvalReport, ModelResult
from compress.modeling import ModelSource, resolve_model
from compress.ownership import check_workspace, data_paths, written_by_compress
from compress.pipeline.fingerprint import (
    artifact_fingerprint,
    cache_key,
    cached_key,
    data_fingerprint,
    data_sources,
)
from compress.pipeline.report import REPORT_FILES, RunResult, StageOutcome, write_reports
from compress.pipeline.schema import BASE, BUILTIN_MODELS, Recipe, RecipeFile, Stage, stage_options
from compress.technique import RunContext


@dataclass
class PlannedStage:
    """What `--dry-run` shows for a stage: its effective options, key and whether it is cached."""

    name: str
    summary: str
    input: str
    path: Path
    options: dict[str, Any]
    key: str | None  # None while an input is not built yet: the key depends on its fingerprint
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def default_run_dir(loaded: RecipeFile) -> Path:
    return Path("runs") / loaded.recipe.name


def _base_model(reference: str, build: bool) -> ModelSource | None:
    """The recipe's model; a built-in model is trained or fetched first when missing (unless
    `build` is off)."""
    if reference not in BUILTIN_MODELS:
        return resolve_model(reference)
    if reference == "builtin:smollm2":
        from compress.realmodel import smollm2_gguf

        return resolve_model(smollm2_gguf())  # the lineage records the GGUF it came from
    from compress.demo import RECORD_NAME, demo_model, demo_model_dir

    fast = reference == "builtin:demo-fast"
    if not build and not (demo_model_dir(fast) / RECORD_NAME).is_file():
        return None
    return resolve_model(demo_model(fast=fast)[0])


class _Keys:
    """Cache keys of a run's stages; each data source is fingerprinted once per run."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def key(self, stage: Stage, options: BaseModel, fingerprints: dict[str, str | None]) -> str | None:
        inputs = {"model": fingerprints[stage.from_]}
        inputs.update({field: fingerprints[ref] for field, ref in stage.model_references().items()})
        if None in inputs.values():
            return None
        data = {source: self._data_fingerprint(source) for source in data_sources(options)}
        return cache_key(stage.op, options, inputs, data)

    def _data_fingerprint(self, source: str) -> str:
        if source not in self._data:
            self._data[source] = data_fingerprint(source)
        return self._data[source]


def plan(loaded: RecipeFile, run_dir: Path | None = None, resume: bool = True) -> list[PlannedStage]:
    """Every stage with its key and whether it is cached; builds nothing (`--dry-run`)."""
    recipe, run_dir = loaded.recipe, run_dir or default_run_dir(loaded)
    base = _base_model(recipe.model, build=False)
    fingerprints: dict[str, str | None] = {BASE: base.sha256 if base else None}
    keys, planned = _Keys(), []
    for stage in recipe.stages:
        options = stage_options(recipe, stage)
        out = run_dir / stage.name
        key = keys.key(stage, options, fingerprints)
        cached = resume and key is not None and cached_key(out) == key
        fingerprints[stage.name] = artifact_fingerprint(out) if cached else None
        planned.append(
            PlannedStage(stage.name, stage.summary(), stage.from_, out, options.model_dump(), key, cached)
        )
    return planned


def run_recipe(
    loaded: RecipeFile, run_dir: Path | None = None, *, resume: bool = True, command: str | None = None
) -> RunResult:
    """Run (or reuse) every stage, evaluate, gate, and write the reports into the run directory.

    `resume=False` recomputes every stage and evaluation. The result's `passed` is False when a
    gate failed; `problems` lists what the harness could not measure as asked.
    """
    recipe, run_dir = loaded.recipe, Path(run_dir or default_run_dir(loaded))
    command = command or shlex.join(
        ["compress", "run", str(loaded.path), *(part for o in loaded.overrides for part in ("--set", o))]
    )
    check_device(recipe.eval.device)  # before the stages: the harness would refuse it only after them
    sources = _check_data_sources(loaded)
    base = _base_model(recipe.model, build=True)
    _check_run_dir(loaded, run_dir, (loaded.path, *base.user_paths, *data_paths(*sources)))
    paths: dict[str, Path] = {BASE: base.path}
    fingerprints: dict[str, str | None] = {BASE: base.sha256}
    keys, outcomes = _Keys(), []
    for stage in recipe.stages:
        options = stage_options(recipe, stage)
        out = run_dir / stage.name
        key = keys.key(stage, options, fingerprints)
        start = time.perf_counter()
        cached = resume and cached_key(out) == key
        if cached:
            console.notice(f"stage {stage.name} ({stage.summary()}): cached in {out}")
        else:
            console.notice(f"stage {stage.name} ({stage.summary()}): running…")
            stamp = {"name": recipe.name, "file": str(loaded.path), "stage": stage.name, "key": key}
            _execute(stage, options, paths, out, stamp, f"{command} (stage {stage.name})", resume, recipe)
            console.notice(f"stage {stage.name}: ran in {time.perf_counter() - start:.1f} s → {out}")
        paths[stage.name], fingerprints[stage.name] = out, artifact_fingerprint(out)
        outcomes.append(
            StageOutcome(
                name=stage.name,
                summary=stage.summary(),
                input=stage.from_,
                path=str(out),
                key=key,
                status="cached" if cached else "ran",
                wall_s=round(time.perf_counter() - start, 3),
                parameters=options.model_dump(),
            )
        )
    report, problems = _evaluate(loaded, paths, resume)
    result = RunResult(
        recipe=recipe.name,
        recipe_file=str(loaded.path),
        overrides=list(loaded.overrides),
        run_dir=str(run_dir),
        model={"reference": recipe.model, "path": str(base.path), "sha256": base.sha256},
        stages=outcomes,
        eval=report,
        comparison=sort_rows(comparison_rows([report.baseline, *report.results]), recipe.compare.sort),
        problems=problems,
    )
    write_reports(result, run_dir, plot=recipe.compare.plot)
    return result


def _check_data_sources(loaded: RecipeFile) -> list[str]:
    """Read the eval text and every calibration text once before any stage runs: offline hub data
    or a missing file fails the run now, not after its stages. Returns the sources."""
    sources = {loaded.suite.data}
    for stage in loaded.recipe.stages:
        calib = getattr(stage_options(loaded.recipe, stage), "calib", None)
        if isinstance(calib, str):
            sources.add(calib)
    for source in sorted(sources):
        check_readable(source)
    return sorted(sources)


#: What `_check_run_dir` recognises beside the stages: a stage's checkpoints, staging and retired copy.
_STAGE_LEFTOVER = re.compile(r"\.(work|tmp-[^/]+|old-[^/]+)$")


def _check_run_dir(loaded: RecipeFile, run_dir: Path, inputs: tuple[Path, ...]) -> None:
    """The run directory is apart from every input and holds only what runs write there: the
    reports, stage artifacts (this recipe's or an earlier version's) and their leftovers. A user's
    folder given as `--out` is refused rather than filled, and its files never overwritten."""
    stages = {stage.name for stage in loaded.recipe.stages}

    def ours(path: Path) -> bool:
        if path.name in REPORT_FILES:
            return path.is_file()
        return path.is_dir() and (written_by_compress(path) or _STAGE_LEFTOVER.sub("", path.name) in stages)

    check_workspace(run_dir, inputs, ours)


def _execute(
    stage: Stage,
    options: BaseModel,
    paths: dict[str, Path],
    out: Path,
    recipe: dict[str, Any],
    command: str,
    resume: bool,
    whole: Recipe,
) -> None:
    """Make the stage's artifact with its technique (atomic; replaces a stale one)."""
    context = RunContext(
        force=True,
        trust_remote_code=whole.trust_remote_code,
        command=command,
        recipe=recipe,
        resume=resume,
        models={field: paths[reference] for field, reference in stage.model_references().items()},
    )
    stage.technique.run(paths[stage.from_], options, out, context)


def _evaluate(loaded: RecipeFile, paths: dict[str, Path], resume: bool) -> tuple[EvalReport, list[str]]:
    """The harness on every stage's artifact against the baseline; each stage's own gates added."""
    recipe = loaded.recipe
    spec = recipe.eval
    scored = [stage for stage in recipe.stages if stage.name != spec.baseline]
    request = EvalRequest(
        [str(paths[stage.name]) for stage in scored],
        loaded.suite,
        str(paths[spec.baseline]),
        list(spec.gates),
        spec.price_per_hour,
        spec.device,
        reuse=resume,
    )
    report, problems = evaluate(request)
    results = [_add_gates(r, stage.gates) for stage, r in zip(scored, report.results, strict=True)]
    # The harness names models by directory; in a run the baseline is `base` or its stage's name.
    baseline = report.baseline.model_copy(update={"name": spec.baseline}) if report.baseline else None
    return report.model_copy(update={"baseline": baseline, "results": results}), problems


def _add_gates(result: ModelResult, gates: list[str]) -> ModelResult:
    extra = [check_gate(parse_gate(gate), result.metrics).as_dict() for gate in gates]
    return result.model_copy(update={"gates": [*result.gates, *extra]})
