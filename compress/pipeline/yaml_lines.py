"""YAML that remembers where each value was written, so a schema error can name the file's line.

PyYAML's composed node tree carries start marks; pydantic reports an error as a path of keys and
list indices (`stages.1.quantize.bitz`). Recording each path's line while constructing the data
joins the two. Duplicate keys, which PyYAML silently resolves to the last one, are an error here:
in a recipe they are always a mistake.
"""

from __future__ import annotations

from typing import Any

import yaml

from compress.errors import CompressError

#: Where a value sits: keys and list indices from the document's root, as pydantic reports them.
Location = tuple[str | int, ...]


def load_with_lines(text: str, filename: str) -> tuple[Any, dict[Location, int]]:
    """The YAML document's data and, for every key and list item, its 1-based line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise CompressError(f"{filename}{line}: not valid YAML: {exc.problem or exc.context}") from exc
    finally:
        loader.dispose()
    lines: dict[Location, int] = {(): 1}
    if node is not None:
        _record(node, (), lines, filename)
    return data, lines


def _record(node: yaml.Node, path: Location, lines: dict[Location, int], filename: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise CompressError(f"{filename}:{line}: key '{key}' is given twice")
            seen.add(key)
            lines[(*path, key)] = line
            _record(value_node, (*path, key), lines, filename)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _record(item, (*path, index), lines, filename)


def line_of(lines: dict[Location, int], path: Location) -> int:
    """The line of the deepest part of `path` the file contains (a missing key: its parent's line)."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1
