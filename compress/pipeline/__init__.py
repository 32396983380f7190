"""Recipes: a whole pipeline (stages, eval, gates, report) as one YAML file, `compress run RECIPE`.

`yaml_lines` reads YAML keeping each key's line, `overrides` applies `--set`, `schema` is the
typed recipe (`version: 1`) and its loader, whose errors name the field and the line,
`fingerprint` decides when a stage's cached output is still valid, `runner` plans and runs the
stages and the eval, and `report` writes `report.md`, `results.json` and `junit.xml` into the run
directory.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: The package's API, imported on first use (the runner pulls in torch and the techniques).
_API = {"run_recipe": "runner", "plan": "runner", "default_run_dir": "runner", "load_recipe": "schema"}


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'compress.pipeline' has no attribute '{name}'")
    return getattr(import_module(f"compress.pipeline.{_API[name]}"), name)
