"""Eval suites: which metrics, on which text, with what budget. YAML files in `evals/`.

A suite is data (one typed object, `Suite`); its hash keys cached results, so changing any field
re-evaluates and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.errors import CompressError
from compress.evaluate.gates import METRIC_ROOTS, GateSchema, check_gates, metric_schema
from compress.evaluate.speed import SpeedSettings
from compress.sizes import parse_size

METRICS = tuple(METRIC_ROOTS)
#: Chosen from the error table in docs/metrics.md (bench/kld_store.py): 32 top tokens and 224
#: tail samples per position, 2,060 bytes whatever the vocabulary.
DEFAULT_KLD_TOPK = 32
DEFAULT_KLD_TAIL_SAMPLES = 224
SUITES_DIR = Path(__file__).resolve().parents[2] / "evals"


#: Below this saving over the full store (small vocabularies) the exact full store is kept.
TOPK_MIN_SAVING = 16


@dataclass(frozen=True)
class StoreLayout:
    """The baseline store's shape: the full distribution (`topk` None) or a `divergence.TopK`."""

    topk: int | None
    tail_samples: int
    storage_dtype: str  # the full store's dtype

    def bytes_per_position(self, vocab_size: int) -> int:
        """int32 index and fp32 log-prob per kept token, plus argmax, reference and tail mass."""
        if self.topk is None:
            return vocab_size * (4 if self.storage_dtype == "float32" else 2)
        return (min(self.topk, vocab_size) + self.tail_samples) * 8 + 12

    def describe(self) -> str:
        if self.topk is None:
            return f"full distributions ({self.storage_dtype})"
        return f"top {self.topk} + {self.tail_samples} tail samples"


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
    #: Storage of the baseline's cached log-probs (`kld_store: full` only): float32 exact, float16 half.
    baseline_dtype: Literal["float32", "float16"] = "float32"
    #: `topk`: each position's K most probable tokens plus M samples of the rest (a size independent
    #: of the vocabulary; KLD unbiased, docs/metrics.md), kept only where it is at least 16× smaller
    #: than the full store; `full`: every log-probability (exact; tokens × vocabulary × 2-4 bytes).
    kld_store: Literal["topk", "full"] = "topk"
    kld_topk: int = Field(DEFAULT_KLD_TOPK, ge=1)
    kld_tail_samples: int = Field(DEFAULT_KLD_TAIL_SAMPLES, ge=0)
    #: Refuse, before any work, a baseline store larger than this ("2GB"); None: no limit.
    max_store: str | None = None
    tasks: list[str] = Field(default_factory=list)
    task_limit: int | None = Field(None, ge=1)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    gates: list[str] = Field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of the suite's content (gates excluded: they judge results, they do not change them)."""
        payload = self.model_dump(exclude={"gates", "name"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def store_layout(self, vocab_size: int) -> StoreLayout:
        """How the baseline's distributions are stored for a vocabulary of `vocab_size`."""
        full = StoreLayout(None, 0, self.baseline_dtype)
        if self.kld_store == "full":
            return full
        top = StoreLayout(self.kld_topk, self.kld_tail_samples, self.baseline_dtype)
        worth_it = top.bytes_per_position(vocab_size) * TOPK_MIN_SAVING <= full.bytes_per_position(vocab_size)
        return top if worth_it else full

    @property
    def max_store_bytes(self) -> int | None:
        if self.max_store is None:
            return None
        try:
            return parse_size(self.max_store, "--max-store")
        except ValueError as exc:
            raise CompressError(str(exc)) from exc

    def gate_schema(self, priced: bool) -> GateSchema:
        """The keys an artifact's result will hold under this suite (`priced`: a price per hour is
        given, so cost is measured): what gates may name."""
        return metric_schema(self.metrics, self.tasks, self.speed.batch_sizes, priced)

    def check(self) -> Suite:
        """Refuse what would fail or be ignored after work started: unknown or no metrics, a bad
        store size, and gates naming keys that will not be measured (the price is not known here,
        so cost gates pass this check; `harness` and recipes check again with it)."""
        if not self.metrics:
            raise CompressError(f"no metrics to measure; choose from {', '.join(METRICS)}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise CompressError(f"unknown metric '{unknown[0]}'; choose from {', '.join(METRICS)}")
        self.max_store_bytes  # noqa: B018 - parse now, so a bad size fails before any work
        check_gates(self.gates, self.gate_schema(priced=True))
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
