"""The local tasks' `custom_dataset` hook: reads a JSONL file named relative to this directory.

`datasets.load_dataset("json", data_files=...)` resolves a relative path against the working
directory, and an absolute path cannot be committed, so the task YAMLs name their data file here
instead. lm-eval imports this module by file path (`!function local_data.load_jsonl`), so the tasks
load offline from any checkout and from any working directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file: str, **_metadata: object) -> datasets.DatasetDict:
    """The rows of `data_file` as the `test` split (lm-eval also passes the task's metadata; unused)."""
    lines = (HERE / data_file).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
