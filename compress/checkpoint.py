"""Safetensors checkpoints read one tensor at a time and written shard by shard.

Streaming a model larger than memory needs both halves: a reader that memory-maps the source and
hands out single tensors (never the whole state dict), and a writer that flushes finished tensors
to numbered shards as soon as they reach a size limit, then writes the index that `transformers`
expects. Whole-model paths use the same two classes, so there is one way to write an artifact.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from compress.errors import CompressError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_SHARD_BYTES = 2 * 1024**3
#: Bytes of a tensor read (or written) at a time when it is streamed by rows.
ROW_CHUNK_BYTES = 8 * 1024**2
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


@contextmanager
def open_safetensors(file: Path) -> Iterator:
    """`safe_open`, with a truncated or corrupt file reported as the user's to fix (one line)."""
    try:
        with safe_open(file, framework="pt") as handle:
            yield handle
    except SafetensorError as exc:
        first_line = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise CompressError(
            f"'{file}' is not a readable safetensors file ({first_line}): it is truncated or corrupt; "
            "download or export it again"
        ) from exc


def _published_names(model: torch.nn.Module, stored: Iterable[str]) -> dict[str, str]:
    """Model name → stored name for the stored tensors transformers renames on loading."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    expected = dict.fromkeys(model.state_dict(), True)
    unknown = [name for name in stored if name not in expected]
    if not unknown:
        return {}
    renamings = [rule for rule in get_model_conversion_mapping(model) if isinstance(rule, WeightRenaming)]
    prefix = getattr(model, "base_model_prefix", None)
    renamed = {name: rename_source_key(name, renamings, [], prefix, expected)[0] for name in unknown}
    return {new: old for old, new in renamed.items() if new in expected}


class CheckpointReader:
    """The tensors of a local safetensors checkpoint (single file or sharded), by name, lazily.

    Names are the model's state-dict names, as `from_pretrained` matches them: a checkpoint saved
    from the base model (GPT-2's hub files say `h.0.attn…` for `transformer.h.0.attn…`) without the
    base-model prefix, and a family's published names (GPT-NeoX's `embed_out` for `lm_head`) through
    transformers' own renaming table, when `model` is given.
    """

    def __init__(self, directory: Path, model: torch.nn.Module | None = None) -> None:
        self.directory = Path(directory)
        self.base_model_prefix = getattr(model, "base_model_prefix", "") or ""
        self._file_of: dict[str, str] = {}
        self._headers: dict[str, tuple[list[int], torch.dtype]] = {}
        for file in sorted(self.directory.glob("*.safetensors")):
            with open_safetensors(file) as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    self._file_of[key] = file.name
        if not self._file_of:
            raise CompressError(f"no safetensors weights in {self.directory}")
        self._renamed = _published_names(model, self._file_of) if model is not None else {}

    def _stored_name(self, name: str) -> str | None:
        if name in self._file_of:
            return name
        if name in self._renamed:
            return self._renamed[name]
        prefix = f"{self.base_model_prefix}."
        if self.base_model_prefix and name.startswith(prefix) and name.removeprefix(prefix) in self._file_of:
            return name.removeprefix(prefix)
        return None

    def names(self) -> list[str]:
        """Every stored tensor name, as the checkpoint spells it."""
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return self._stored_name(name) is not None

    def _require(self, name: str) -> str:
        stored = self._stored_name(name)
        if stored is None:
            raise CompressError(f"tensor '{name}' is not in the checkpoint {self.directory}")
        return stored

    def get(self, name: str) -> torch.Tensor:
        """A private copy of one tensor.

        The file is mapped only for the copy: a tensor left backed by the mapping would keep it
        open, and pages written through it (in-place quantization) would stay resident until the
        mapping closed, so memory would grow block after block.
        """
        stored = self._require(name)
        with open_safetensors(self.directory / self._file_of[stored]) as handle:
            return handle.get_tensor(stored).clone()

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype, read from the header without loading the tensor."""
        return self.header(name)[1]

    def header(self, name: str) -> tuple[list[int], torch.dtype]:
        """The stored shape and dtype, read from the header without loading the tensor (once per
        tensor: chunked reads and per-chunk dtype conversions ask again)."""
        stored = self._require(name)
        if stored not in self._headers:
            with open_safetensors(self.directory / self._file_of[stored]) as handle:
                view = handle.get_slice(stored)
                self._headers[stored] = (list(view.get_shape()), SAFETENSORS_DTYPES[view.get_dtype()])
        return self._headers[stored]

    def row_chunks(self, name: str, chunk_bytes: int = ROW_CHUNK_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, a private copy of the rows from there) over a tensor, a few MB at a time.

        The file is mapped for one chunk at a time: pages read through a mapping count as resident
        while it is open, so reading a 113 MB embedding through one mapping costs 113 MB.
        """
        shape, dtype = self.header(name)
        stored = self._require(name)
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        step = max(1, chunk_bytes // max(row_bytes, 1))
        for start in range(0, shape[0], step):
            with open_safetensors(self.directory / self._file_of[stored]) as handle:
                yield start, handle.get_slice(stored)[start : start + step].clone()

    def rows(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """Rows `indices` (sorted, unique) of a tensor, read chunk by chunk: an embedding's used rows
        without the whole table ever being resident."""
        parts = []
        for start, chunk in self.row_chunks(name):
            inside = indices[(indices >= start) & (indices < start + chunk.shape[0])]
            parts.append(chunk[inside - start])
        return torch.cat(parts)


class ShardWriter:
    """Collect tensors and write them as `model-XXXXX-of-YYYYY.safetensors` shards plus an index.

    A shard is flushed as soon as it holds `max_shard_bytes`, so at most one shard's worth of
    output is ever held in memory. One shard in all is written as plain `model.safetensors`.
    """

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def _check_new(self, name: str) -> None:
        if name in self._pending or any(name in names for _, names in self._written):
            raise RuntimeError(f"internal error: tensor '{name}' written twice")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._check_new(name)
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self.flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def add_in_chunks(
        self, name: str, shape: list[int], dtype: torch.dtype, chunks: Iterable[torch.Tensor]
    ) -> None:
        """Write one tensor as a shard of its own from consecutive chunks of rows, so that a tensor
        larger than the shard budget (SmolLM2's embedding is eight of its blocks) is never whole in
        memory. safetensors has no incremental writer, so the file is laid out here as its format
        says: the header's length (8 bytes, little-endian), the JSON header padded to 8 bytes, the
        raw little-endian data."""
        self._check_new(name)
        self.flush()
        size = math.prod(shape) * dtype.itemsize
        entry = {"dtype": SAFETENSORS_NAMES[dtype], "shape": shape, "data_offsets": [0, size]}
        header = json.dumps({"__metadata__": {"format": "pt"}, name: entry}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        path = self.directory / f".shard-{len(self._written):05d}.safetensors"
        written = 0
        with path.open("wb") as file:
            file.write(struct.pack("<Q", len(header)))
            file.write(header)
            for chunk in chunks:
                data = chunk.detach().to("cpu", dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
                file.write(data.data)
                written += data.nbytes
        if written != size:
            raise RuntimeError(f"internal error: '{name}' streamed {written} bytes of {size}")
        self._written.append((path, [name]))
        self.total_bytes += size

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.directory / f".shard-{len(self._written):05d}.safetensors"
        save_file(self._pending, path, metadata={"format": "pt"})
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Name the shards by their final count and write the index; returns the shard paths."""
        self.flush()
        count = len(self._written)
        names = (
            [SINGLE_NAME]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        weight_map: dict[str, str] = {}
        final = []
        for (path, tensors), name in zip(self._written, names, strict=True):
            path.rename(self.directory / name)
            final.append(self.directory / name)
            weight_map.update(dict.fromkeys(tensors, name))
        if count > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return final
