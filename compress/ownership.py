"""What a command may touch: the one place that decides whether a path may be written or replaced.

Users keep their own files beside and inside the paths they hand over: the model, its parent
folder, backups named like ours (`q.old-v1`, `exp.tmp-keep`), reports next to weights. So the
rules go by ownership, never by names:

- **Inputs are never written.** An output directory may not be an input, contain one, or lie
  inside one; a report file (`--json`, `--junit`, `--markdown`, `--plot`) may not be an input or
  lie inside one. A GGUF input is its file, not the float copy we cache of it.
- **`--force` replaces only what we wrote**: a directory carrying one of our markers (an
  artifact's manifest, a baseline store's record, the demo's record) or an empty one. A folder
  of the user's files is refused, with or without `--force`.
- **Leftovers are ours only when they say so**: a staging directory carries an owner record
  (`OWNER_FILE`), a directory retired by a `--force` replace a retirement record
  (`RETIRED_FILE`) naming its target. `staging.py` removes or restores nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from compress.errors import CompressError
from compress.modeling import MANIFEST_NAME, ModelSource

#: Inside a staging directory while its run lives: host, pid and the pid's start time.
OWNER_FILE = ".compress-owner.json"
#: Inside a directory a `--force` replace moved aside (`OUT.old-*`): its owner and the target's name.
RETIRED_FILE = ".compress-retired.json"


def _absolute(path: Path) -> Path:
    """The absolute path with `.` and `..` folded (so `--out .` has a name) and symlinks resolved."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _related(a: Path, b: Path) -> str | None:
    """How `a` stands to `b`: 'is', 'contains', 'lies inside', or None when apart."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def data_paths(*specs: str | Path | None) -> tuple[Path, ...]:
    """The local files or folders among data sources (`FILE`, `FILE:column`, a directory); hub and
    builtin sources are not the user's files."""
    found = []
    for spec in specs:
        if not spec:
            continue
        path = Path(str(spec)).expanduser()
        prefix = Path(str(spec).rpartition(":")[0]).expanduser()
        if path.exists():
            found.append(path)
        elif str(prefix) not in ("", ".") and prefix.exists():
            found.append(prefix)
    return tuple(found)


def written_by_compress(directory: Path, marker: str = MANIFEST_NAME) -> bool:
    """Whether `directory` is one we wrote: it holds our `marker` (for an artifact, a manifest that
    names compress as its tool). A file merely named like ours does not count."""
    record = Path(directory) / marker
    if not record.is_file():
        return False
    if marker != MANIFEST_NAME:
        return True
    try:
        manifest = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and (manifest.get("tool") or {}).get("name") == "compress"


def _check_apart(path: Path, inputs: Iterable[Path], what: str, relations: tuple[str, ...]) -> None:
    target = _absolute(path)
    for source in inputs:
        relation = _related(target, _absolute(source))
        if relation in relations:
            raise CompressError(
                f"{what} '{path}' {relation} the input '{source}'; choose a path outside every input"
            )


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a directory (a file there is the user's mistake)."""
    for ancestor in _absolute(path).parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CompressError(f"{what} '{path}': '{ancestor}' is a file, not a directory")
            return


def check_output_dir(
    out: Path, force: bool, inputs: Iterable[Path] = (), marker: str = MANIFEST_NAME, what: str = "--out"
) -> None:
    """Refuse, before any work, an output directory this command may not write or replace."""
    out = Path(out)
    inputs = tuple(inputs)
    _check_apart(out, inputs, what, ("is", "contains", "lies inside"))
    _check_parent(out, what)
    if out.is_symlink():
        raise CompressError(f"{what} '{out}' is a symbolic link; give the directory itself or another path")
    if not out.exists():
        return
    if not out.is_dir():
        raise CompressError(f"output '{out}' exists and is not a directory")
    if not force:
        raise CompressError(f"output '{out}' already exists; pass --force to replace it")
    check_replaceable(out, marker)


def check_replaceable(out: Path, marker: str = MANIFEST_NAME) -> None:
    """`--force` replaces a directory only when we wrote it, or when it is empty."""
    if written_by_compress(out, marker) or not any(Path(out).iterdir()):
        return
    raise CompressError(
        f"'{out}' holds files compress did not write; --force replaces only compress's own output: "
        "choose another path, or move them away yourself"
    )


def check_report_path(path: Path | None, inputs: Iterable[Path], option: str) -> None:
    """A report file may not be an input or lie inside one (the weights it would replace are the
    user's), nor be a directory."""
    if path is None:
        return
    path = Path(path)
    _check_apart(path, inputs, option, ("is", "lies inside"))
    _check_parent(path, option)
    if path.is_dir():
        raise CompressError(f"{option} '{path}' is a directory; give a file name")


#: Option fields through which a technique reads the user's data files.
_DATA_OPTIONS = ("calib", "prompts", "data", "eval_data")


def command_inputs(*sources: ModelSource, options: object = None) -> tuple[Path, ...]:
    """Every path a command reads: its models as the user gave them, and its local data files."""
    specs = [getattr(options, name, None) for name in _DATA_OPTIONS]
    return tuple(path for source in sources for path in source.user_paths) + data_paths(
        *(spec for spec in specs if isinstance(spec, (str, Path)))
    )


def check_workspace(
    directory: Path, inputs: Iterable[Path], ours: Callable[[Path], bool], what: str = "--out"
) -> None:
    """A directory a command keeps adding to (a recipe's run directory): apart from every input,
    and holding nothing but what `ours` recognises, so rewriting its reports and stages never
    overwrites a user's file of the same name."""
    directory = Path(directory)
    _check_apart(directory, tuple(inputs), what, ("is", "contains", "lies inside"))
    _check_parent(directory, what)
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise CompressError(f"{what} '{directory}' is not a directory; give a directory path")
    if not directory.exists():
        return
    strangers = sorted(path.name for path in directory.iterdir() if not ours(path))
    if strangers:
        shown = ", ".join(strangers[:3]) + (", …" if len(strangers) > 3 else "")
        raise CompressError(
            f"{what} '{directory}' holds files compress did not write ({shown}); choose another directory"
        )


def report_inputs(
    references: Iterable[str | Path | None], data: Iterable[str | Path | None] = ()
) -> tuple[Path, ...]:
    """The inputs of a command that scores or lists models (`eval`, `compare`): each model or result
    path given, the source model an artifact's manifest names (the default baseline), and local data."""
    found: list[Path] = []
    for reference in references:
        path = Path(str(reference)).expanduser() if reference else None
        if path is None or not path.exists():
            continue
        found.append(path)
        try:
            source = json.loads((path / MANIFEST_NAME).read_text())["lineage"]["source"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(Path(source))
    return (*found, *data_paths(*data))
