"""Commands built from a technique's declaration: flags, defaults and help from its config's fields.

Each config field becomes an option: `--field-name` (or the field's `Flag`), the field's default
(none where the `Flag` leaves it unset), the field's `description` as help, a choice list for a
`Literal`, `--x/--no-x` for a boolean. Around them every technique command takes the same model
argument, `--out`, `--force` and `--trust-remote-code`, and `--dry-run` when the technique can plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from compress import console
from compress.options import Flag, parse_options
from compress.technique import RunContext, Technique

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _flag_of(info: FieldInfo) -> Flag:
    return next((item for item in info.metadata if isinstance(item, Flag)), Flag())


def _option_type(annotation: Any) -> Any:
    """The type the command line parses: a mapping is given as text (`k=v,k=v`), which the config's
    validator reads."""
    parts = get_args(annotation) or (annotation,)
    if any(getattr(part, "__origin__", part) is dict for part in parts):
        return str | None
    return annotation


def config_parameters(config: type[BaseModel], fixed: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per config field, in declaration order (except the `fixed` ones, which
    the command itself decides: `export gguf` fixes `format`)."""
    parameters = []
    for name, info in config.model_fields.items():
        if name in fixed:
            continue
        spec = _flag_of(info)
        dashed = name.replace("_", "-")
        annotation = _option_type(info.annotation)
        decls = spec.decls or ((f"--{dashed}/--no-{dashed}",) if annotation is bool else (f"--{dashed}",))
        default = None if spec.unset else info.get_default(call_default_factory=True)
        if spec.unset:
            annotation = annotation | None
        option = typer.Option(default, *decls, help=info.description or "")
        parameters.append(inspect.Parameter(name, _KEYWORD, default=option, annotation=annotation))
    return parameters


def option(name: str, default: Any, annotation: Any, *decls: str, help: str) -> inspect.Parameter:
    """A keyword parameter that typer reads as the option `decls`."""
    return inspect.Parameter(
        name, _KEYWORD, default=typer.Option(default, *decls, help=help), annotation=annotation
    )


def with_parameters(
    function: Callable[..., None], parameters: list[inspect.Parameter], doc: str
) -> Callable[..., None]:
    """`function(**params)` with the signature typer builds its options from, and its help."""
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    function.__doc__ = doc
    return function


def _common_parameters(technique: Technique) -> list[inspect.Parameter]:
    parameters = [
        option(
            "out", None, Path | None, "--out", "-o", help="Output directory (default: under compressed/)."
        ),
        option("force", False, bool, "--force", "-f", help="Replace --out if it exists."),
        option(
            "trust_remote_code", False, bool, "--trust-remote-code", help="Run the model repo's own code."
        ),
    ]
    if technique.plan is not None:
        help = "Print the plan and parameter counts; write nothing."
        parameters.insert(0, option("dry_run", False, bool, "--dry-run", help=help))
    return parameters


def technique_command(
    technique: Technique, command_line: Callable[[], str], fixed: dict[str, Any] | None = None
) -> Callable[..., None]:
    """The command function for `technique`, its signature built from the config for typer to read;
    `fixed` config values are the command's own (no option for them)."""
    fixed = fixed or {}
    fields = [name for name in technique.config.model_fields if name not in fixed]

    def command(model: str, **params: Any) -> None:
        config = parse_options(technique.config, {**fixed, **{name: params[name] for name in fields}})
        trust_remote_code = params["trust_remote_code"]
        if params.get("dry_run"):
            planned = technique.plan(model, config, trust_remote_code)
            if console.mode.json:
                console.emit_json(planned)
            else:
                console.stdout.print(technique.plan_view(planned))
            return
        context = RunContext(
            force=params["force"], trust_remote_code=trust_remote_code, command=command_line()
        )
        path = technique.run(model, config, params["out"], context)
        console.show_written(path, technique.report(path), technique.view)

    model = inspect.Parameter(
        "model",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(..., help="A model directory, a hub id, or a compress artifact."),
        annotation=str,
    )
    parameters = [model, *config_parameters(technique.config, tuple(fixed)), *_common_parameters(technique)]
    return with_parameters(command, parameters, technique.help)
