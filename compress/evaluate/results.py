"""Eval results: the versioned schema, `eval.json` inside artifacts, and JUnit XML for CI.

An artifact's `eval.json` holds one entry per (suite fingerprint, baseline fingerprint), so the same
artifact can be scored by several suites or against several baselines, and an unchanged pair is
reused instead of re-evaluated.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from pydantic import BaseModel, Field, ValidationError

from compress.artifact import DENSE_FORMAT, write_text_atomic
from compress.errors import CompressError
from compress.version import __version__

RESULT_SCHEMA_VERSION = 1
EVAL_FILE = "eval.json"


class ModelResult(BaseModel):
    """One model's scores under one suite, against one baseline."""

    name: str
    path: str
    role: Literal["baseline", "artifact"]
    method: str | None = None
    format: str = DENSE_FORMAT
    sha256: str
    suite: str
    suite_sha256: str
    baseline_sha256: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    #: How it ran: dtype and layers per kernel for speed and memory, and the dtype quality was scored in.
    runtime: dict[str, Any] = Field(default_factory=dict)
    gates: list[dict[str, Any]] = Field(default_factory=list)
    device: str = "cpu"
    wall_s: float = 0.0
    tool_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(gate["passed"] for gate in self.gates)


class EvalReport(BaseModel):
    """What `compress eval --json` writes and `compress compare` reads: baseline first, then artifacts."""

    schema_version: int = RESULT_SCHEMA_VERSION
    suite: str
    suite_sha256: str
    baseline: ModelResult | None = None
    results: list[ModelResult] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)


def entry_key(suite_sha256: str, baseline_sha256: str | None) -> str:
    return f"{suite_sha256[:16]}:{(baseline_sha256 or 'none')[:16]}"


def read_cached_result(artifact_dir: Path, key: str, sha256: str) -> ModelResult | None:
    """A stored result for this key, if the artifact and the tool are still the same."""
    path = Path(artifact_dir) / EVAL_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        entry = stored.get("entries", {}).get(key)
        if stored.get("schema_version") != RESULT_SCHEMA_VERSION or entry is None:
            return None
        result = ModelResult.model_validate(entry["result"])
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable cache is re-evaluated, not an error
    return result if result.sha256 == sha256 and result.tool_version == __version__ else None


def store_result(artifact_dir: Path, key: str, result: ModelResult, baseline: ModelResult | None) -> bool:
    """Add a result (and its baseline's, for ratios) to the artifact's `eval.json`; False if read-only."""
    path = Path(artifact_dir) / EVAL_FILE
    stored: dict[str, Any] = {"schema_version": RESULT_SCHEMA_VERSION, "entries": {}}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if previous.get("schema_version") == RESULT_SCHEMA_VERSION:
                stored = previous
        except ValueError:
            pass
    stored["entries"][key] = {
        "result": result.model_dump(),
        "baseline": baseline.model_dump() if baseline else None,
    }
    try:
        write_text_atomic(path, json.dumps(stored, indent=2) + "\n")
    except OSError:
        return False
    return True


def load_results(paths: list[Path]) -> list[ModelResult]:
    """Results from `compress eval --json` files and from artifacts' `eval.json`, baseline first."""
    baselines: list[ModelResult] = []
    results: list[ModelResult] = []
    for path in map(Path, paths):
        if not path.exists():
            raise CompressError(f"'{path}' does not exist; give eval JSON reports or evaluated artifacts")
        file = path / EVAL_FILE if path.is_dir() else path
        if not file.is_file():
            raise CompressError(f"'{path}' has no eval results; run `compress eval {path}` first")
        try:
            data = json.loads(file.read_text())
        except ValueError as exc:
            raise CompressError(f"'{file}' is not a JSON results file: {exc}") from exc
        try:
            found, found_baselines = _read_results(data)
        except (ValidationError, KeyError, TypeError, AttributeError) as exc:
            reason = _first_problem(exc)
            raise CompressError(
                f"'{file}' is not a valid eval report ({reason}); run `compress eval` again"
            ) from exc
        if found is None:
            raise CompressError(f"'{file}' is neither an eval report nor an artifact's eval.json")
        if not found:
            raise CompressError(f"'{file}' holds no results; run `compress eval` on an artifact first")
        results += found
        baselines += found_baselines
    unique = {r.sha256: r for r in baselines}
    unique.update({r.sha256: r for r in results if r.sha256 not in unique})
    return sorted(unique.values(), key=lambda r: r.role != "baseline")


def _read_results(data: Any) -> tuple[list[ModelResult] | None, list[ModelResult]]:
    """(results, baselines) of a parsed file: an artifact's eval.json (its newest entry) or an
    `EvalReport`; None for results when it is neither."""
    if isinstance(data, dict) and "entries" in data:
        entries = list(data["entries"].values())
        if not entries:
            return [], []
        newest = max(entries, key=lambda e: e["result"]["created"])
        baseline = newest.get("baseline")
        return [ModelResult.model_validate(newest["result"])], (
            [ModelResult.model_validate(baseline)] if baseline else []
        )
    if isinstance(data, dict) and "results" in data:
        report = EvalReport.model_validate(data)
        return list(report.results), [report.baseline] if report.baseline else []
    return None, []


def _first_problem(exc: Exception) -> str:
    """One short phrase: pydantic's first error with its location, or the missing key."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def junit_xml(report: EvalReport, title: str | None = None) -> str:
    """JUnit XML for CI: one test case per (artifact, gate), plus one per artifact for the run itself.

    `title` names the test suite (default: `compress eval (SUITE)`).
    """
    cases = []
    for result in report.results:
        cases.append((result.name, "evaluated", None))
        for gate in result.gates:
            cases.append((result.name, gate["gate"], None if gate["passed"] else gate["message"]))
    failures = sum(1 for _, _, failure in cases if failure)
    suite = ElementTree.Element(
        "testsuite",
        name=title or f"compress eval ({report.suite})",
        tests=str(len(cases)),
        failures=str(failures),
    )
    for classname, name, failure in cases:
        case = ElementTree.SubElement(suite, "testcase", classname=classname, name=name)
        if failure:
            ElementTree.SubElement(case, "failure", message=failure).text = failure
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True)
