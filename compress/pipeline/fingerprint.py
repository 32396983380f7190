"""When a stage's cached output is still valid: its cache key, and the fingerprints the key is made of.

An output is reused only when everything that decides it is unchanged: the input artifact (and
the teacher), the technique and every option, the data it reads, and the tool version. Models are
fingerprinted by content (an artifact's manifest holds the sha256 of its config and weights), and
local data by its bytes: sizes and modification times miss an edit that keeps both, and
calibration files are small. Hub data is known by its spec string only (the hub has no cheap
content hash for a streamed split).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from compress.artifact import read_manifest
from compress.data import local_files, parse_source
from compress.errors import CompressError
from compress.modeling import fingerprint_files
from compress.version import __version__

#: The option fields through which a stage reads data.
DATA_FIELDS = ("calib", "prompts")


def data_sources(options: BaseModel) -> list[str]:
    return [value for name in DATA_FIELDS if (value := getattr(options, name, None))]


def data_fingerprint(source: str) -> str:
    """sha256 of the source spec and, for files, directories and builtin text, of every file's bytes."""
    digest = hashlib.sha256(source.encode())
    parsed = parse_source(source)
    if parsed.kind != "hf":
        for file in local_files(parsed):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def artifact_fingerprint(directory: Path) -> str:
    """An artifact's recorded sha256 of config and weights; computed for a plain model directory."""
    manifest = read_manifest(directory)
    return manifest.sha256 if manifest is not None and manifest.sha256 else fingerprint_files(directory)


def cache_key(op: str, options: BaseModel, inputs: dict[str, str], data: dict[str, str]) -> str:
    """sha256 over the technique, its options, the inputs' and data's fingerprints, and the tool version."""
    payload = {
        "op": op,
        "options": options.model_dump(mode="json"),
        "inputs": inputs,
        "data": data,
        "tool": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_key(directory: Path) -> str | None:
    """The cache key of the complete artifact in `directory`, if a recipe stage made one there.

    The manifest is written last and the directory renamed into place after it, so a manifest
    means a complete artifact; an unreadable one counts as absent (the stage is rebuilt).
    """
    try:
        manifest = read_manifest(directory) if Path(directory).is_dir() else None
    except CompressError:
        return None
    return (manifest.recipe or {}).get("key") if manifest is not None else None
