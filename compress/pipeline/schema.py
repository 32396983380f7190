"""The recipe: one typed object (`version: 1`), read from YAML with errors that name field and line.

A stage names one registered technique (`compress.technique`) and its options are that technique's
own config: the YAML form of exactly the CLI's flags, so nothing is defined twice. The stage schema
is built from the registry, so a new technique is a recipe stage without an edit here. Everything
that can be checked without loading a model is checked here (unknown keys, types, stage
references, gates, the suite), so a typo is exit 2 before any work.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from compress.errors import CompressError
from compress.evaluate.compare import SORT_KEYS
from compress.evaluate.gates import check_gates, parse_gate
from compress.evaluate.suite import Suite, load_suite
from compress.pipeline.overrides import apply_overrides
from compress.pipeline.yaml_lines import Location, line_of, load_with_lines
from compress.technique import RECIPE_BASE, RecipeData, Technique, techniques

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
#: The recipe's own model, as stages (`from:`, `teacher:`) and the eval baseline refer to it.
BASE = RECIPE_BASE
#: Built-in models a recipe can name without a hub: the demo model, full and at the test budget,
#: and SmolLM2-135M from its PyPI wheel (`compress.realmodel`).
BUILTIN_MODELS = ("builtin:demo", "builtin:demo-fast", "builtin:smollm2")
#: Stage and recipe names become directory names.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _valid_gate(expression: str) -> str:
    try:
        parse_gate(expression)
    except CompressError as exc:
        raise ValueError(str(exc)) from exc
    return expression


GateExpression = Annotated[str, AfterValidator(_valid_gate)]


class Stage(BaseModel):
    """One step: a name (its output directory), its input, and exactly one technique with options.

    The technique fields (`quantize:`, `prune:`, …) are added per registered technique by
    `recipe_model`; this class holds what every stage has.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME)
    #: The input: `base` or an earlier stage; unset, the previous stage (the base for the first).
    from_: str | None = Field(None, alias="from")
    #: Gates for this stage's artifact only, on top of `eval.gates`.
    gates: list[GateExpression] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_technique(self) -> Stage:
        given = [name for name in techniques() if getattr(self, name, None) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise ValueError(
                f"a stage has exactly one of {', '.join(techniques())}; '{self.name}' has {found}"
            )
        return self

    @property
    def op(self) -> str:
        """The technique's name."""
        return next(name for name in techniques() if getattr(self, name, None) is not None)

    @property
    def technique(self) -> Technique:
        return techniques()[self.op]

    @property
    def options(self) -> BaseModel:
        return getattr(self, self.op)

    def summary(self) -> str:
        """A few words for logs and tables: `quantize gptq 4-bit`, `prune mlp 0.3`, `distill from base`."""
        return self.technique.summary(self.options)

    def model_references(self) -> dict[str, str]:
        """The other models the stage's options name (a teacher), by field: `base` or a stage."""
        return {name: getattr(self.options, name) for name in self.technique.model_fields}


class CalibData(BaseModel):
    """Calibration text for the stages that read data (GPTQ, AWQ, pruning importance, distill prompts)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    samples: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=16)


class EvalData(BaseModel):
    """The eval text; overrides the suite's `data`, `seq_len` and `max_tokens`."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    seq_len: int | None = Field(None, ge=2)
    max_tokens: int | None = Field(None, ge=2)


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calib: CalibData = Field(default_factory=CalibData)
    eval: EvalData = Field(default_factory=EvalData)


class EvalSpec(BaseModel):
    """The eval harness run on every stage's artifact at the end."""

    model_config = ConfigDict(extra="forbid")

    suite: str = "default"
    #: `base` or a stage name.
    baseline: str = BASE
    #: Override the suite's metrics or lm-eval tasks.
    metrics: list[str] | None = None
    tasks: list[str] | None = None
    #: Gates for every stage's artifact.
    gates: list[GateExpression] = Field(default_factory=list)
    price_per_hour: float | None = Field(None, gt=0)
    device: str = "auto"


class CompareSpec(BaseModel):
    """The comparison table: row order, and whether to save the quality-vs-size/speed plot."""

    model_config = ConfigDict(extra="forbid")

    sort: Literal[SORT_KEYS] | None = None  # type: ignore[valid-type]
    plot: bool = False


class Recipe(BaseModel):
    """A whole pipeline: the model, the data, the stages in order, the eval and the comparison."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str = Field(pattern=NAME)
    model: str
    #: Let every stage run the model repo's own code (the CLI's --trust-remote-code); off by default.
    trust_remote_code: bool = False
    seed: int = 0
    data: Data = Field(default_factory=Data)
    #: Each item is the `recipe_model` stage class, with a field per registered technique.
    stages: list[Stage] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    compare: CompareSpec = Field(default_factory=CompareSpec)

    @model_validator(mode="after")
    def _default_inputs(self) -> Recipe:
        """A stage without `from:` reads the previous stage (the first reads the base model)."""
        for index, stage in enumerate(self.stages):
            if stage.from_ is None:
                stage.from_ = self.stages[index - 1].name if index else BASE
        return self


@dataclass(frozen=True)
class RecipeFile:
    """A validated recipe with paths resolved, the overrides it was loaded with, and its eval suite."""

    recipe: Recipe
    path: Path
    overrides: tuple[str, ...]
    suite: Suite


@cache
def _recipe_model(configs: tuple[tuple[str, type[BaseModel]], ...]) -> type[Recipe]:
    fields: dict[str, Any] = {name: (config | None, None) for name, config in configs}
    stage = create_model("Stage", __base__=Stage, **fields)
    return create_model("Recipe", __base__=Recipe, stages=(list[stage], Field(min_length=1)))


def recipe_model() -> type[Recipe]:
    """The recipe schema with a stage field for every technique registered now (built once per
    set of techniques and configs)."""
    return _recipe_model(tuple((name, t.config) for name, t in techniques().items()))


def stage_options(recipe: Recipe, stage: Stage) -> BaseModel:
    """The stage's options with the recipe's data and seed in the fields the stage leaves unset.

    Which fields those are is the technique's to say (`Technique.recipe_data`): only a stage that
    reads data takes them, so a new calibration set re-runs GPTQ but not an fp16 cast.
    """
    calib = recipe.data.calib
    data = RecipeData(calib.source, calib.samples, calib.seq_len, recipe.seed)
    return stage.technique.stage_options(stage.options, data)


# --- loading ------------------------------------------------------------------------------------


class _FieldError(Exception):
    """A problem found after validation, at a location in the recipe."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(message)
        self.location = location


def recipe_path(reference: str | Path) -> Path:
    """A recipe file, or a name in `recipes/` (`ci`, `demo`)."""
    path = Path(reference)
    if path.is_file():
        return path
    if not path.suffix and (RECIPES_DIR / f"{reference}.yaml").is_file():
        return RECIPES_DIR / f"{reference}.yaml"
    available = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise CompressError(f"recipe '{reference}' not found; give a YAML path or one of: {available}")


def load_recipe(reference: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeFile:
    """Read, override (`--set`), validate and resolve a recipe; any problem is one line naming where."""
    path = recipe_path(reference)
    filename = str(path)
    data, lines = load_with_lines(path.read_text(), filename)
    if not isinstance(data, dict):
        raise CompressError(f"{filename}:1: a recipe is a mapping with name, model, stages, eval, …")
    touched = apply_overrides(data, list(overrides))

    def error(at: Location, field: Location, message: str) -> CompressError:
        """`FILE:LINE: FIELD: MESSAGE`, or `--set KEY=VALUE: …` when an override wrote that part."""
        blamed = [  # the most specific override covering `at`, then the last one
            (len(set_at), order, assignment)
            for order, (set_at, assignment) in enumerate(touched.items())
            if at and set_at[: len(at)] == at[: len(set_at)]
        ]
        where = f"--set {max(blamed)[2]}" if blamed else f"{filename}:{line_of(lines, at)}"
        name = _field_name(field)
        return CompressError(f"{where}: {name + ': ' if name else ''}{message}")

    try:
        recipe = recipe_model().model_validate(data)
        _check_references(recipe)
        recipe = _resolve_paths(recipe, path.parent)
        suite = _suite(recipe, path.parent)
        _check_gates(recipe, suite)
    except ValidationError as exc:
        # An unknown key first: it is usually a typo, and it explains a "missing" error beside it.
        first = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise error(tuple(first["loc"]), *_describe(first)) from exc
    except _FieldError as exc:
        raise error(exc.location, exc.location, str(exc)) from exc
    return RecipeFile(recipe, path, tuple(overrides), suite)


def _describe(error: dict[str, Any]) -> tuple[Location, str]:
    """Where an error is reported (the section, for unknown and missing keys) and what it says."""
    location = tuple(error["loc"])
    if error["type"] in ("extra_forbidden", "missing"):
        key, parent = location[-1], location[:-1]
        if error["type"] == "missing":
            return parent, f"missing required key '{key}'"
        kind = "option" if parent and parent[-1] in techniques() else "key"
        close = difflib.get_close_matches(str(key), _keys_at(parent), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return parent, f"unknown {kind} '{key}'{hint}"
    return location, str(error["msg"]).removeprefix("Value error, ")


def _field_name(location: Location) -> str:
    """`stages[1].quantize`: the path as a reader of the YAML would write it."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _keys_at(location: Location) -> list[str]:
    """The keys the schema allows at `location`, for "did you mean" hints."""
    model: type[BaseModel] | None = recipe_model()
    for part in location:
        if isinstance(part, int) or model is None:
            continue
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        model = _model_in(fields[part].annotation) if part in fields else None
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _model_in(arg))), None)


def _check_references(recipe: Recipe) -> None:
    """Unique stage names, and every `from:`, `teacher:` and baseline naming `base` or an earlier stage."""
    earlier = [BASE]
    for index, stage in enumerate(recipe.stages):
        if stage.name in earlier:
            what = "the base model's name" if stage.name == BASE else "the name of an earlier stage"
            raise _FieldError(("stages", index, "name"), f"'{stage.name}' is {what}; stage names are unique")
        _check_earlier(stage.from_, earlier, recipe, ("stages", index, "from"))
        for field, reference in stage.model_references().items():
            _check_earlier(reference, earlier, recipe, ("stages", index, stage.op, field))
        earlier.append(stage.name)
    _check_earlier(recipe.eval.baseline, earlier, recipe, ("eval", "baseline"))


def _check_earlier(name: str, earlier: list[str], recipe: Recipe, location: Location) -> None:
    if name in earlier:
        return
    if name in (stage.name for stage in recipe.stages):
        raise _FieldError(
            location, f"stage '{name}' is not before this one; refer to base or an earlier stage"
        )
    raise _FieldError(location, f"unknown stage '{name}'; choose one of {', '.join(earlier)}")


def _relative_to(directory: Path, reference: str | None) -> str | None:
    """A relative path that exists beside the recipe is taken from there; anything else as written.

    Data sources may end in `:column`, so the part before the last colon is tried too.
    """
    if reference is None or reference.startswith(("builtin:", "hf:")) or Path(reference).is_absolute():
        return reference
    prefix, sep, column = reference.rpartition(":")
    for candidate, suffix in ((reference, ""), (prefix, f"{sep}{column}")):
        if candidate and (directory / candidate).exists():
            return f"{directory / candidate}{suffix}"
    return reference


def _resolve_paths(recipe: Recipe, directory: Path) -> Recipe:
    data = recipe.data
    calib = data.calib.model_copy(update={"source": _relative_to(directory, data.calib.source)})
    eval_data = data.eval.model_copy(update={"source": _relative_to(directory, data.eval.source)})
    return recipe.model_copy(
        update={
            "model": _relative_to(directory, recipe.model),
            "data": data.model_copy(update={"calib": calib, "eval": eval_data}),
        }
    )


def _check_gates(recipe: Recipe, suite: Suite) -> None:
    """Every gate (the suite's, `eval.gates`, each stage's) against the keys the recipe's metrics
    and tasks will write, and no gates on the baseline stage (it is not scored, so they would never
    be checked): a typo is exit 2 before the first stage runs, not a failed gate at the end."""
    schema = suite.gate_schema(priced=recipe.eval.price_per_hour is not None)
    where: list[tuple[Location, list[str]]] = [(("eval", "suite"), suite.gates)]
    where += [(("eval", "gates", index), [gate]) for index, gate in enumerate(recipe.eval.gates)]
    for index, stage in enumerate(recipe.stages):
        if stage.gates and stage.name == recipe.eval.baseline:
            raise _FieldError(
                ("stages", index, "gates"),
                f"stage '{stage.name}' is the eval baseline, which is not scored: its gates would "
                "never be checked; move them to another stage or to eval.gates",
            )
        where += [(("stages", index, "gates", number), [gate]) for number, gate in enumerate(stage.gates)]
    for location, gates in where:
        try:
            check_gates(gates, schema)
        except CompressError as exc:
            raise _FieldError(location, str(exc)) from exc


def _suite(recipe: Recipe, directory: Path) -> Suite:
    """The eval suite with the recipe's eval data, metrics and tasks in place of the suite's own."""
    spec, data = recipe.eval, recipe.data.eval
    try:
        suite = load_suite(_relative_to(directory, spec.suite))
    except CompressError as exc:
        raise _FieldError(("eval", "suite"), str(exc)) from exc
    update = {
        "data": data.source,
        "seq_len": data.seq_len,
        "max_tokens": data.max_tokens,
        "metrics": spec.metrics,
        "tasks": spec.tasks,
    }
    try:
        return suite.model_copy(update={k: v for k, v in update.items() if v is not None}).check()
    except CompressError as exc:
        raise _FieldError(("eval", "metrics"), str(exc)) from exc
