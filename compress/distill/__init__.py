"""Distillation: `generate` (the teacher writes a dataset), `train` (the student learns from it, with
the teacher online or its stored top-k), and `runner` (both stages: `compress distill`).

The package is also the API's verb: `compress.distill(teacher, student, out, steps=200)` calls
`runner.distill`; `compress.distill.generate` and `compress.distill.train` are the two stages.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from compress.callable_module import make_callable

_STAGES = {"distill": "runner", "generate": "generate", "train": "train"}


def __getattr__(name: str) -> Any:
    """`generate`, `train` and `distill` import torch and transformers on first use only."""
    if name not in _STAGES:
        raise AttributeError(f"module 'compress.distill' has no attribute '{name}'")
    return getattr(import_module(f"compress.distill.{_STAGES[name]}"), name)


make_callable(__name__, "compress.distill.runner:distill")
