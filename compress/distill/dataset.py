"""Reading teacher generations for training: the dataset, its fingerprint, and batches.

Batches are right-padded; `labels` are the input ids with padding masked (-100), the convention
transformers' loss and Trainer use. Sequences longer than `max_seq_len` are cut (the end of a long
completion is dropped, never its prompt's start).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError

IGNORE_INDEX = -100
#: A generation directory: its request and state, and the finished shards (datasets on disk).
GENERATION_FILE = "generation.json"
SHARDS_DIR = "shards"


def load_generations(path: str | Path, require_finished: bool = True):
    """The concatenated shards of a generation directory and its `generation.json`."""
    from datasets import concatenate_datasets, load_from_disk

    path = Path(path)
    try:
        meta = json.loads((path / GENERATION_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CompressError(
            f"'{path}' is not a generation directory (no readable {GENERATION_FILE})"
        ) from exc
    if require_finished and not meta.get("finished"):
        raise CompressError(f"generation in '{path}' did not finish; rerun the same command to resume it")
    shards = sorted(p for p in (path / SHARDS_DIR).glob("[0-9]*") if not p.name.endswith(".partial"))
    if not shards:
        raise CompressError(f"'{path}' holds no generated samples")
    dataset = concatenate_datasets([load_from_disk(str(shard)) for shard in shards])
    if len(dataset) == 0:
        raise CompressError(f"'{path}' holds no generated samples")
    return dataset, meta


def dataset_fingerprint(meta: dict[str, Any]) -> str:
    """sha256 of what decided the generations (teacher, prompts, sampling), from their metadata."""
    return hashlib.sha256(json.dumps(meta["request"], sort_keys=True).encode()).hexdigest()


class DistillCollator:
    """Pads a list of dataset rows into tensors; carries the stored top-k when training offline."""

    def __init__(self, pad_id: int, max_seq_len: int, with_topk: bool):
        self.pad_id = pad_id
        self.max_seq_len = max_seq_len
        self.with_topk = with_topk

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [list(row["input_ids"])[: self.max_seq_len] for row in rows]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}
        if self.with_topk:
            k = len(rows[0]["topk_ids"][0])
            topk_ids = torch.zeros(len(rows), width, k, dtype=torch.long)
            topk_logprobs = torch.full((len(rows), width, k), float("-inf"))
            for row, data in enumerate(rows):
                length = min(len(data["topk_ids"]), width)
                topk_ids[row, :length] = torch.tensor(data["topk_ids"][:length])
                topk_logprobs[row, :length] = torch.tensor(data["topk_logprobs"][:length])
            batch["topk_ids"] = topk_ids
            batch["topk_logprobs"] = topk_logprobs
        return batch
