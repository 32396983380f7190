"""Writes the data of the two standard-library tasks from the held-out split of `builtin:python-stdlib`.

The JSONL files are committed: the standard library differs between Python versions, so the data is
generated once (fixed seed, on Python 3.11.7) rather than on every machine. Rerun from the repository
root with `python evals/tasks/build_stdlib_tasks.py`; on Python 3.11.7 the output is byte-identical
(another 3.11 release gives the same items unless it changed one of the source lines).

- `stdlib_next_line.jsonl`: eight lines of code and the start of the next line (about 70% of it,
  cut before a space or bracket); choose its real end among four. The three distractors are the ends
  of lines in other held-out files, within three characters of the same length. Whole next lines as
  choices were tried first: a line's own likelihood (short or common lines win) swamped the context,
  and the demo models scored at chance; matched-length line ends leave the context to decide.
- `stdlib_heldout_rolling.jsonl`: whole-line snippets of a few hundred characters, for perplexity.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from compress.data import stdlib_files, stdlib_root

HERE = Path(__file__).resolve().parent
SEED = 1234
PYTHON = (3, 11)

NEXT_LINE_ITEMS = 200
CONTEXT_LINES = 8
MIN_LINE_CHARS = 20  # without indentation; shorter lines (`else:`, `return x`) leave too little to cut
MAX_LINE_CHARS = 80
HEAD_FRACTION = 0.7  # the share of the line given, the end is cut at the next of CUT_BEFORE
CUT_BEFORE = " (.,=["
MIN_END_CHARS = 6
END_LENGTH_TOLERANCE = 3
CHOICES = 4

ROLLING_ITEMS = 40
SNIPPET_CHARS = (300, 600)


def source_files() -> dict[str, list[str]]:
    """Held-out files as lines, codec tables (`encodings/`) left out: they are data, not code."""
    root = stdlib_root()
    files = {}
    for path in stdlib_files("heldout"):
        relative = path.relative_to(root).as_posix()
        if not relative.startswith("encodings/"):
            files[relative] = path.read_text(encoding="utf-8").splitlines()
    return files


def is_answer_line(line: str) -> bool:
    """A line worth completing: real code (not a comment or blank), long enough, not too long."""
    stripped = line.strip()
    return (
        len(stripped) >= MIN_LINE_CHARS
        and len(line) <= MAX_LINE_CHARS
        and not stripped.startswith("#")
        and "\t" not in line
    )


def is_context(lines: list[str]) -> bool:
    """Context lines must fit the model's window and carry some code."""
    return (
        all(len(line) <= MAX_LINE_CHARS for line in lines) and sum(bool(line.strip()) for line in lines) >= 4
    )


def split_line(line: str) -> tuple[str, str]:
    """(start, end) of a line, cut before the first of CUT_BEFORE past HEAD_FRACTION of its text."""
    indent = len(line) - len(line.lstrip())
    cut = indent + int(len(line.strip()) * HEAD_FRACTION)
    while cut < len(line) and line[cut] not in CUT_BEFORE:
        cut += 1
    return line[:cut], line[cut:]


def next_line_items(files: dict[str, list[str]], rng: random.Random) -> list[dict]:
    """Multiple-choice items: context ending in a line's start, four candidate ends, the real one's index."""
    candidates = [
        (name, index)
        for name, lines in files.items()
        for index in range(CONTEXT_LINES, len(lines))
        if is_answer_line(lines[index]) and is_context(lines[index - CONTEXT_LINES : index])
    ]
    ends = [(name, split_line(files[name][index])[1]) for name, index in candidates]
    ends = [(name, end) for name, end in ends if len(end) >= MIN_END_CHARS]

    items: list[dict] = []
    for name, index in rng.sample(candidates, len(candidates)):
        start, end = split_line(files[name][index])
        pool = sorted(
            {
                other_end
                for other, other_end in ends
                if other != name
                and other_end != end
                and abs(len(other_end) - len(end)) <= END_LENGTH_TOLERANCE
            }
        )
        if len(end) < MIN_END_CHARS or len(pool) < CHOICES - 1:
            continue
        choices = rng.sample(pool, CHOICES - 1)
        label = len(items) % CHOICES  # every position equally often
        choices.insert(label, end)
        context = "\n".join([*files[name][index - CONTEXT_LINES : index], start])
        items.append(
            {"source": f"{name}:{index + 1}", "context": context, "choices": choices, "label": label}
        )
        if len(items) == NEXT_LINE_ITEMS:
            return items
    raise SystemExit(f"only {len(items)} next-line items could be built")


def snippet(lines: list[str], start: int) -> str | None:
    """Whole lines from `start` until the snippet is long enough; None when the file ends first."""
    low, high = SNIPPET_CHARS
    taken: list[str] = []
    for line in lines[start:]:
        taken.append(line)
        text = "\n".join(taken)
        if len(text) >= low:
            return text if len(text) <= high else None
    return None


def rolling_items(files: dict[str, list[str]], rng: random.Random) -> list[dict]:
    """One snippet per file from a random top-level line (a statement's start), files drawn without
    replacement, then again until there are enough."""
    items: list[dict] = []
    names = sorted(files)
    while len(items) < ROLLING_ITEMS:
        for name in rng.sample(names, len(names)):
            lines = files[name]
            starts = [i for i, line in enumerate(lines) if line.strip() and not line.startswith(" ")]
            text = snippet(lines, rng.choice(starts)) if starts else None
            if text is not None:
                items.append({"source": name, "text": text})
            if len(items) == ROLLING_ITEMS:
                break
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} items to {path.relative_to(HERE.parents[1])}")


def main() -> None:
    if sys.version_info[:2] != PYTHON:
        raise SystemExit(
            f"run this on Python {PYTHON[0]}.{PYTHON[1]}: the committed data comes from its stdlib"
        )
    files = source_files()
    write_jsonl(HERE / "stdlib_next_line.jsonl", next_line_items(files, random.Random(SEED)))
    write_jsonl(HERE / "stdlib_heldout_rolling.jsonl", rolling_items(files, random.Random(SEED + 1)))


if __name__ == "__main__":
    main()
