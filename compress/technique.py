"""The technique contract: what a compression technique declares once, and the registry that holds it.

A technique (quantize, prune, distill, …) is a typed `Config` plus a `run` that turns one model into
one artifact. Everything around it is built from that declaration instead of dispatching on names:
the CLI command and its flags (`compress.cli_options`), the recipe stage key and its schema
(`compress.pipeline.schema`), the stage's cache key and its model inputs (`compress.pipeline.runner`),
and the manifest (the config's fields, recorded verbatim by the technique's runner).

Adding one is writing one module that calls `register` at import: built-in techniques live in their
package (`compress/<package>/technique.py`, listed in `BUILTIN`); further ones are any module in
`compress/techniques/`, or any module a distribution names under the `compress.techniques` entry
point group. Technique modules import configs only (torch stays unimported until a `run`), so the
CLI's `--help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: Built-in techniques and the module that registers each, in the order the CLI lists them.
BUILTIN = {
    "quantize": "compress.quantize.technique",
    "prune": "compress.prune.technique",
    "distill": "compress.distill.technique",
    "export": "compress.export.technique",
}
#: How a recipe names its own model, in `from:` and in a technique's model fields (a teacher).
RECIPE_BASE = "base"
#: The package whose modules are techniques, and the entry point group of installed ones.
PLUGIN_PACKAGE = "compress.techniques"
ENTRY_POINT_GROUP = "compress.techniques"


@dataclass(frozen=True)
class RecipeData:
    """What a recipe offers every stage: its calibration data and seed (each may be unset)."""

    calib: str | None = None
    samples: int | None = None
    seq_len: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class RunContext:
    """How a run was asked for, beside its input and config: the same for every technique."""

    force: bool = False
    trust_remote_code: bool = False
    #: The command line (or recipe stage) recorded in the manifest; None: the API call.
    command: str | None = None
    #: The recipe stage that asked (name, file, stage, cache key), recorded in the manifest.
    recipe: dict[str, Any] | None = None
    #: Continue an interrupted run from its work files (techniques that have them).
    resume: bool = False
    #: Paths of the other models the config names (`Technique.model_fields`), resolved by a recipe.
    models: Mapping[str, Path] = field(default_factory=dict)


def library_runner(target: str) -> Callable[[str | Path, BaseModel, Path | None, RunContext], Path]:
    """A technique's `run` that calls a library function (`"package.module:function"`, imported on
    first use) of the API's shape: `function(model, out, force=…, trust_remote_code=…, command=…,
    recipe=…, **config fields)`, as `compress.quantize` and `compress.prune` are."""

    def run(source: str | Path, config: BaseModel, out: Path | None, context: RunContext) -> Path:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(
            source,
            out,
            force=context.force,
            trust_remote_code=context.trust_remote_code,
            command=context.command,
            recipe=context.recipe,
            **config.model_dump(),
        )

    return run


def no_recipe_data(config: BaseModel, data: RecipeData) -> dict[str, Any]:
    """For techniques that read no data: nothing from the recipe."""
    return {}


def calibration_defaults(config: BaseModel, data: RecipeData) -> dict[str, Any]:
    """The recipe's calibration text, sample count, window length and seed, for a config whose
    fields carry the usual names (`calib`, `calib_samples`, `seq_len`, `seed`)."""
    return {"calib": data.calib, "calib_samples": data.samples, "seq_len": data.seq_len, "seed": data.seed}


def describe_artifact(path: Path) -> dict[str, Any]:
    """The default report of a run: the artifact's manifest, size and bits per weight."""
    from compress.artifact import describe

    return describe(path)


def artifact_view(report: dict[str, Any]) -> Any:
    """The default rendering of that report (what `compress inspect` shows)."""
    from compress.render import inspect_view

    return inspect_view(report)


@dataclass(frozen=True)
class Technique:
    """One technique, declared once.

    `run(source, config, out, context)` writes the artifact (atomically, manifest last) and returns
    its path; `out` None lets the technique choose. `recipe_data(config, data)` names the config
    fields a recipe fills from its `data:` and `seed` when the stage leaves them unset (only the
    data the technique reads, so new calibration text re-runs GPTQ but not an fp16 cast).
    `model_fields` are config fields that name another model (a distillation's teacher): in a
    recipe they refer to `base` or an earlier stage, count in the cache key, and reach `run` as
    `context.models`. `report(path)` is what the command prints (as JSON with `--json`) and
    `view(report)` its rendering; `plan(source, config, trust_remote_code)` and `plan_view`, when
    given, are a `--dry-run` that writes nothing. `command` False: the package writes its own CLI
    command (distill's subcommands).
    """

    name: str
    config: type[BaseModel]
    run: Callable[[str | Path, BaseModel, Path | None, RunContext], Path]
    summary: Callable[[BaseModel], str]
    help: str
    recipe_data: Callable[[BaseModel, RecipeData], dict[str, Any]] = no_recipe_data
    model_fields: tuple[str, ...] = ()
    report: Callable[[Path], dict[str, Any]] = describe_artifact
    view: Callable[[dict[str, Any]], Any] = artifact_view
    plan: Callable[[str, BaseModel, bool], dict[str, Any]] | None = None
    plan_view: Callable[[dict[str, Any]], Any] | None = None
    command: bool = True
    epilog: str = ""

    def stage_options(self, options: BaseModel, data: RecipeData) -> BaseModel:
        """`options` with the recipe's data and seed in the fields the stage left unset."""
        defaults = self.recipe_data(options, data)
        unset = {k: v for k, v in defaults.items() if v is not None and k not in options.model_fields_set}
        return type(options).model_validate({**options.model_dump(exclude_unset=True), **unset})


_registry: dict[str, Technique] = {}
_loaded = False


def register(technique: Technique) -> Technique:
    """Add `technique` (a module calls this at import); a second one under the same name is an error."""
    existing = _registry.get(technique.name)
    if existing is not None and existing is not technique:
        raise ValueError(f"a technique named '{technique.name}' is already registered")
    _registry[technique.name] = technique
    return technique


def unregister(name: str) -> None:
    """Remove a technique (tests that register a throwaway one)."""
    _registry.pop(name, None)


def discover() -> None:
    """Import every technique module: the built-in ones, each module of `compress.techniques` (on
    every directory of its `__path__`), and installed entry points. A module already imported is
    not run again, so calling this twice registers nothing twice."""
    global _loaded
    _loaded = True
    for module in BUILTIN.values():
        importlib.import_module(module)
    package = importlib.import_module(PLUGIN_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__, f"{PLUGIN_PACKAGE}."):
        importlib.import_module(info.name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def techniques() -> dict[str, Technique]:
    """Every registered technique by name: the built-in ones first, then the others by name
    (whatever order their modules were imported in)."""
    if not _loaded:
        discover()
    order = [*(name for name in BUILTIN if name in _registry), *sorted(set(_registry) - set(BUILTIN))]
    return {name: _registry[name] for name in order}


def technique(name: str) -> Technique:
    return techniques()[name]
