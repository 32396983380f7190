"""Put a bench's measured tables into the README, between markers, instead of pasting them.

A region of README.md is delimited by `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; the
opening marker's line may say which command fills it. This script reads a bench's output on stdin,
keeps its markdown tables (the lines that start with `|`, with one blank line between tables), and
replaces the region's contents with them:

    python bench/quantize.py --models none --streaming smollm2 \
        | python bench/readme_tables.py streaming-smollm2

`--check` instead exits 1 when the region would change (for a reviewer: is the README current with
this output?). A region that does not exist is an error, so a renamed marker is not silently skipped.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def tables(output: str) -> str:
    """The markdown tables in a bench's output, in order, separated by one blank line."""
    found: list[list[str]] = []
    previous_was_table = False
    for line in output.splitlines():
        is_table = line.startswith("|")
        if is_table and not previous_was_table:
            found.append([])
        if is_table:
            found[-1].append(line.rstrip())
        previous_was_table = is_table
    return "\n\n".join("\n".join(table) for table in found)


def replace_region(text: str, name: str, body: str) -> str:
    """`text` with the region `name` holding `body` (the marker lines themselves are kept)."""
    marker = re.escape(name)
    opening, closing = rf"<!-- bench:{marker}(?: [^\n]*)? -->\n", rf"<!-- /bench:{marker} -->"
    pattern = re.compile(rf"({opening})(.*?)({closing})", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no region <!-- bench:{name} --> … <!-- /bench:{name} -->")
    return pattern.sub(lambda match: f"{match.group(1)}{body}\n{match.group(3)}", text, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the region, as in <!-- bench:NAME -->")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs, write nothing")
    args = parser.parse_args()
    body = tables(sys.stdin.read())
    if not body:
        raise SystemExit("no markdown table in the input")
    current = README.read_text()
    updated = replace_region(current, args.name, body)
    if args.check:
        sys.exit(0 if updated == current else 1)
    README.write_text(updated)


if __name__ == "__main__":
    main()
