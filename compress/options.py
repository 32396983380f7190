"""How a config field appears on the command line, declared on the field itself.

Configs are the single source of an option's name, default and help: `Field(description=...)` is
the help text, the field's default is the flag's default, and a `Flag` in the field's `Annotated`
metadata says what `--field-name` cannot (a short name, a `--sym/--asym` pair, no default shown
because a validator chooses it from other options). `compress.cli_options` reads them; recipes read
the same fields under their own names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from compress.errors import CompressError, option_error


@dataclass(frozen=True)
class Flag:
    """A field's command-line spelling when `--field-name` will not do.

    `decls` are click's declarations (`"--method", "-m"`; `"--sym/--asym"`). `unset` leaves the
    flag without a default: the config's validator fills the field from the others (the method
    from `--bits`), which a default on the command line would override.
    """

    decls: tuple[str, ...] = ()
    unset: bool = False


def flag(*decls: str, unset: bool = False) -> Flag:
    return Flag(tuple(decls), unset)


def parse_options(
    config: type[BaseModel], options: dict[str, object], none_is_unset: bool = True
) -> BaseModel:
    """`config` from keyword options; an invalid one is a one-line error naming its flag.

    `none_is_unset`: an option given as None is left out (the config's default or validator
    decides); off where None is a value of its own (a distillation's whole-document prompts).
    """
    if none_is_unset:
        options = {name: value for name, value in options.items() if value is not None}
    try:
        return config(**options)
    except ValidationError as exc:
        raise CompressError(option_error(exc)) from exc
