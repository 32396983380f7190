"""Eval suites: which metrics, on which text, with what budget. YAML files in `evals/`.

A suite is data (one typed object, `Suite`); its hash keys cached results, so changing any field
re-evaluates and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.errors import CompressError
from compress.evaluate.gates import parse_gate
from compress.evaluate.speed import SpeedSettings

METRICS = ("ppl", "kld", "tasks", "speed", "memory", "size", "cost")
SUITES_DIR = Path(__file__).resolve().parents[2] / "evals"


class Suite(BaseModel):
    """What `compress eval` measures."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    metrics: list[str] = Field(default_factory=lambda: list(METRICS))
    data: str = "hf:wikitext:wikitext-2-raw-v1:test"
    seq_len: int = Field(2048, ge=2)
    max_tokens: int | None = Field(None, ge=2)
    batch_size: int = Field(8, ge=1)
    #: Compute dtype: `float32` upcasts half-precision weights exactly (CPU half matmuls are slow and
    #: would add activation rounding); `auto` keeps the stored dtype (what a GPU deployment runs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: Storage of the baseline's cached log-probs: float32 for exact comparisons, float16 for size.
    baseline_dtype: Literal["float32", "float16"] = "float32"
    tasks: list[str] = Field(default_factory=list)
    task_limit: int | None = Field(None, ge=1)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    gates: list[str] = Field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of the suite's content (gates excluded: they judge results, they do not change them)."""
        payload = self.model_dump(exclude={"gates", "name"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def check(self) -> Suite:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise CompressError(f"unknown metric '{unknown[0]}'; choose from {', '.join(METRICS)}")
        for gate in self.gates:
            parse_gate(gate)
        return self


def load_suite(reference: str | Path) -> Suite:
    """A suite by name (`default`, `quick`: files in `evals/`) or by path to a YAML file."""
    path = Path(reference)
    if not path.suffix and not path.exists():
        path = SUITES_DIR / f"{reference}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.yaml")))
        raise CompressError(f"suite '{reference}' not found; give a YAML path or one of: {available}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CompressError(f"suite {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    try:
        return Suite.model_validate({"name": path.stem, **raw}).check()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CompressError(f"suite {path}: field '{where}': {first['msg']}") from exc
