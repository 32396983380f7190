"""`--set KEY=VALUE`: change one value of a recipe from the command line, before it is validated.

Keys are dotted paths; a stage is addressed by its name (`stages.int4.quantize.bits=3`), which stays
right when stages are added or reordered, unlike an index. Values are YAML (`3`, `true`, `null`,
`[a, b]`), so they take the types the file would give them. Setting a key the recipe lacks adds
it (the schema then judges it like any other key); walking through a value that is not a section
is an error.
"""

from __future__ import annotations

from typing import Any

import yaml

from compress.errors import CompressError
from compress.pipeline.yaml_lines import Location


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[Location, str]:
    """Apply each `KEY=VALUE` to `data` in place; returns the location each one set, for error messages."""
    touched: dict[Location, str] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CompressError(f"--set '{assignment}' is not KEY=VALUE, e.g. stages.int4.quantize.bits=3")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise CompressError(f"--set {assignment}: the value is not valid YAML ({exc})") from exc
        parent, location = data, ()
        for part in parts[:-1]:
            parent, step = _step_into(parent, part, location, assignment)
            location = (*location, step)
        if not isinstance(parent, dict):
            raise _not_a_section(location, assignment)
        parent[parts[-1]] = value
        touched[(*location, parts[-1])] = assignment
    return touched


def _step_into(node: Any, part: str, location: Location, assignment: str) -> tuple[Any, str | int]:
    """The child `part` names (a stage by its name), created when a section is missing."""
    if location == ("stages",) and isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, dict) and item.get("name") == part:
                return item, index
        known = ", ".join(str(item.get("name")) for item in node if isinstance(item, dict)) or "none"
        raise CompressError(f"--set {assignment}: no stage named '{part}' (stages: {known})")
    if not isinstance(node, dict):
        raise _not_a_section(location, assignment)
    child = node.setdefault(part, {})
    if child is None:
        child = node[part] = {}
    return child, part


def _not_a_section(location: Location, assignment: str) -> CompressError:
    where = ".".join(str(part) for part in location)
    return CompressError(f"--set {assignment}: '{where}' is a value or a list, not a section; set it whole")
