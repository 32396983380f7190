"""Artifacts: a loadable model directory plus the manifest of how it was made.

Writes are atomic. Everything is built in a sibling `DIR.tmp-*` directory and renamed into place
only after the manifest, written last, is on disk; any exception removes the staging directory, so
an interrupted command never leaves a loadable-looking half artifact behind. Only safetensors
weights are written or read.
"""

from __future__ import annotations

import json
import platform
import shutil
import uuid
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from compress.checkpoint import open_safetensors
from compress.errors import CompressError
from compress.modeling import MANIFEST_NAME, ModelSource, count_parameters, fingerprint_files, resolve_device
from compress.version import __version__

MANIFEST_SCHEMA_VERSION = 1
#: The format of a plain `transformers` model: safetensors weights in the model's own dtype.
DENSE_FORMAT = "dense-safetensors"
TRACKED_LIBRARIES = (
    "torch",
    "transformers",
    "safetensors",
    "accelerate",
    "datasets",
    "tokenizers",
    "bitsandbytes",
    "lm-eval",
)


class Lineage(BaseModel):
    """Where an artifact came from: the original model, and the artifact it was made from if any."""

    source: dict[str, Any]
    parent: dict[str, Any] | None = None


class Manifest(BaseModel):
    """`compress.json`: everything needed to know, and redo, how an artifact was made."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    tool: dict[str, str] = Field(default_factory=lambda: {"name": "compress", "version": __version__})
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str
    recipe: dict[str, Any] | None = None
    lineage: Lineage
    method: str
    parameters: dict[str, Any]
    format: str
    calibration: dict[str, Any] | None = None
    seed: int | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    sha256: str = ""
    phases: list[dict[str, Any]] = Field(default_factory=list)
    libraries: dict[str, str | None] = Field(default_factory=dict)
    device: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide an artifact's numbers (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> dict[str, Any]:
    """The device a phase ran on, as the manifest records it."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def lineage_for(source: ModelSource) -> Lineage:
    """A new artifact's lineage: its root source model, and its parent when made from an artifact."""
    entry = source.lineage()
    if source.is_artifact:
        parent_lineage = entry.get("lineage") or {}
        return Lineage(source=parent_lineage.get("source", entry), parent=entry)
    return Lineage(source=entry)


def api_call(function: str, *args: Any, **kwargs: Any) -> str:
    """How a Python API call is recorded in a manifest's `command` (the CLI records its argv)."""
    parts = [repr(str(a)) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items() if v is not None]
    return f"compress.{function}({', '.join(parts)})"


# --- atomic writes -----------------------------------------------------------------------------


#: Tokenizer and generation files copied verbatim from the source, so an artifact tokenizes exactly
#: like its parent (re-saving a tokenizer can rewrite it).
TOKENIZER_FILE_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template*",
)


def copy_tokenizer_files(source_dir: Path, directory: Path) -> None:
    for pattern in TOKENIZER_FILE_PATTERNS:
        for file in Path(source_dir).glob(pattern):
            if file.is_file():
                shutil.copy2(file, directory / file.name)


def save_model_files(model: torch.nn.Module, source_dir: Path, directory: Path) -> None:
    """Weights as safetensors and config via transformers; tokenizer files copied from the source."""
    model.save_pretrained(directory)
    copy_tokenizer_files(source_dir, directory)
    unexpected = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if unexpected:
        raise RuntimeError(f"internal error: pickle weights were written: {unexpected}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file through a temporary name and a rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_text(text)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def new_manifest(
    *,
    method: str,
    config: BaseModel,
    source: ModelSource,
    command: str,
    recipe: dict[str, Any] | None,
    format: str,
    phases: list[dict[str, Any]],
    device: torch.device,
    calibration: dict[str, Any] | None = None,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest every technique writes: what it ran (`method`, the whole `config`), on what
    (`source`'s lineage), how it was asked (`command`, the `recipe` stage), its cost (`phases`,
    `device`) and the libraries that decide its numbers. `model` is filled by `publish`."""
    return Manifest(
        command=command,
        recipe=recipe,
        lineage=lineage_for(source),
        method=method,
        parameters=config.model_dump(),
        format=format,
        calibration=calibration,
        seed=seed,
        phases=phases,
        libraries=library_versions(),
        device=device_description(device),
        extra=extra or {},
    )


def publish(
    staging: Path,
    manifest: Manifest,
    model: torch.nn.Module,
    parameters: int | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """The last write of every technique, into its staging directory: the manifest (with the model
    it describes, and the fingerprint of the files beside it), then the model card.

    `parameters` and `dtype` default to the model's own; a packed model hides how many weights its
    tensors stand for, so the caller gives the source's count. After this the directory is renamed
    into place and the manifest is never rewritten: the harness adds `eval.json` and the card's
    results table beside it (the SPEC's artifact layout), outside the fingerprint.
    """
    stored = dtype if dtype is not None else next(model.parameters()).dtype
    manifest.model = {
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": count_parameters(model) if parameters is None else parameters,
        "dtype": str(stored).removeprefix("torch."),
    }
    write_manifest(staging, manifest)
    write_model_card(staging, manifest)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write `compress.json`, stamping it with the fingerprint of the files beside it."""
    manifest.sha256 = fingerprint_files(directory)
    (directory / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of an artifact, or None for a plain model directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise CompressError(f"{path} is not a valid compress manifest: {exc}") from exc


# --- describing what is on disk ------------------------------------------------------------------


def _tensor_data_bytes(file: Path) -> int:
    """Bytes of tensor data in a safetensors file: its size less the 8-byte length and JSON header."""
    with open(file, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
    return file.stat().st_size - 8 - header_length


def weight_statistics(directory: Path) -> dict[str, Any]:
    """Sizes and parameter counts read from the safetensors headers, without loading any weight.

    Bits per weight counts tensor data only (the convention of quantization papers and llama.cpp);
    the headers are in `weight_bytes`, the size on disk.
    """
    files = sorted(Path(directory).glob("*.safetensors"))
    weight_bytes = sum(f.stat().st_size for f in files)
    data_bytes = sum(_tensor_data_bytes(f) for f in files)
    parameters = 0
    dtypes: dict[str, int] = {}
    for file in files:
        with open_safetensors(file) as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor_slice = handle.get_slice(name)
                count = 1
                for dim in tensor_slice.get_shape():
                    count *= dim
                parameters += count
                dtype = tensor_slice.get_dtype()
                dtypes[dtype] = dtypes.get(dtype, 0) + count
    return {
        "weight_files": [f.name for f in files],
        "weight_bytes": weight_bytes,
        "parameters": parameters,
        "parameters_by_dtype": dtypes,
        "tensor_bytes": data_bytes,
        "bits_per_weight": round(8 * data_bytes / parameters, 4) if parameters else None,
    }


def packed_layer_statistics(directory: Path, quantization: dict) -> dict[str, Any] | None:
    """Bits per weight of the packed layers alone (GPTQ/AWQ layouts), from tensor shapes and sizes.

    The whole-model figure mixes in embeddings and norms; this is the figure a format's theory
    predicts: bits + (16 + bits) / group for scales and zero points, plus g_idx's 32 bits per input.
    """
    if quantization.get("quant_method") not in ("gptq", "awq"):
        return None
    from compress.quantize.kernels import KernelPlan, LayerSpec, plan_kernel
    from compress.quantize.qlinear import dynamic_override
    from compress.quantize.runtime import runtime_dtype
    from compress.quantize.vocab import EMBEDDING_KEY, LOOKUP_KERNEL

    embedding = (quantization.get(EMBEDDING_KEY) or {}).get("module")
    device = resolve_device("auto")
    dtype = runtime_dtype(device)
    parameters = data_bytes = layers = 0
    kernels: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open_safetensors(file) as handle:
            keys = list(handle.keys())
            for key in (k for k in keys if k.endswith(".qweight")):
                prefix = key.removesuffix("qweight")
                bits = dynamic_override(prefix[:-1], quantization, "bits", int(quantization["bits"]))
                rows, columns = handle.get_slice(key).get_shape()
                groups = handle.get_slice(f"{prefix}scales").get_shape()[0]
                if quantization["quant_method"] == "gptq":
                    g_idx = handle.get_tensor(f"{prefix}g_idx").long()
                    in_features, out_features = g_idx.numel(), columns
                    contiguous = bool(
                        torch.equal(g_idx, torch.arange(in_features) // -(-in_features // groups))
                    )
                else:
                    in_features, out_features, contiguous = rows, columns * 32 // bits, True
                spec = LayerSpec(in_features, out_features, bits, -(-in_features // groups), contiguous)
                plan = plan_kernel(spec, device.type, dtype)
                if prefix[:-1] == embedding:  # looked up by rows, not multiplied
                    plan = KernelPlan(LOOKUP_KERNEL)
                kernels[plan.kernel] += 1
                if plan.note:
                    notes[plan.note] += 1
                parameters += in_features * out_features
                layers += 1
                for name in ("qweight", "qzeros", "scales", "g_idx"):
                    if f"{prefix}{name}" in keys:
                        tensor = handle.get_slice(f"{prefix}{name}")
                        count = 1
                        for dim in tensor.get_shape():
                            count *= dim
                        data_bytes += count * (2 if tensor.get_dtype() == "F16" else 4)
    if not parameters:
        return None
    return {
        "layers": layers,
        "parameters": parameters,
        "bits_per_weight": round(8 * data_bytes / parameters, 4),
        "kernels": {
            "device": device.type,
            "dtype": str(dtype).removeprefix("torch."),
            "layers": dict(sorted(kernels.items())),
            "notes": dict(sorted(notes.items())),
        },
    }


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


def _describe_gguf(path: Path, file: Path) -> dict[str, Any]:
    """`describe` for a GGUF artifact (`export gguf`) or a .gguf file: its statistics come from the
    file's header. The folder's manifest counts only for the file it was written with."""
    from compress.gguf_source import gguf_statistics

    manifest = read_manifest(file.parent)
    if manifest is not None and manifest.extra.get("gguf_file", file.name) != file.name:
        manifest = None  # another .gguf beside an export's own: not what the manifest describes
    statistics = gguf_statistics(file)
    return {
        "path": str(path),
        "is_artifact": manifest is not None,
        "architecture": statistics.pop("architecture"),
        "model_type": "gguf",
        "quantization_config": None,
        "disk_bytes": directory_bytes(path) if path.is_dir() else file.stat().st_size,
        **statistics,
        "manifest": manifest.model_dump() if manifest else None,
    }


def describe(directory: Path) -> dict[str, Any]:
    """What `compress inspect` shows: manifest, lineage, size, parameter count, bits per weight (of
    a model directory, an artifact, or one .gguf file)."""
    from compress.gguf_source import gguf_file_in

    directory = Path(directory)
    if directory.is_file() and directory.suffix.lower() == ".gguf":
        return _describe_gguf(directory, directory)
    if not directory.is_dir():
        raise CompressError(f"'{directory}' is not a directory")
    # One GGUF, as a model source takes it; several are one line asking for one of them.
    if not (directory / "config.json").is_file() and (gguf := gguf_file_in(directory)):
        return _describe_gguf(directory, gguf)
    if not (directory / "config.json").is_file():
        raise CompressError(f"'{directory}' has no config.json, so it is not a model or artifact")
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{directory / 'config.json'} is not valid JSON: {exc}") from exc
    manifest = read_manifest(directory)
    statistics = weight_statistics(directory)
    if config.get("quantization_config") and manifest and manifest.model.get("parameters"):
        # Packed tensors hide the real parameter count; the manifest kept the original's.
        statistics["parameters"] = manifest.model["parameters"]
        statistics["bits_per_weight"] = round(8 * statistics["tensor_bytes"] / statistics["parameters"], 4)
        statistics["quantized_layers"] = packed_layer_statistics(directory, config["quantization_config"])
    return {
        "path": str(directory),
        "is_artifact": manifest is not None,
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "quantization_config": config.get("quantization_config"),
        "disk_bytes": directory_bytes(directory),
        **statistics,
        "manifest": manifest.model_dump() if manifest else None,
    }


def write_model_card(directory: Path, manifest: Manifest, results_markdown: str | None = None) -> None:
    """A `README.md` model card: what this is, how it was made, how to load it, and its results."""
    source = manifest.lineage.source
    parent = manifest.lineage.parent
    lines = [
        f"# {directory.name.split('.tmp-')[0]}",
        "",
        f"Made by `compress` {manifest.tool['version']} with method **{manifest.method}** "
        f"(format: {manifest.format}).",
        "",
        "## Lineage",
        "",
        f"- source model: `{source.get('reference')}` (sha256 `{str(source.get('sha256'))[:16]}…`"
        + (f", revision `{source['revision']}`" if source.get("revision") else "")
        + ")",
    ]
    if parent:
        lines.append(f"- parent artifact: `{parent.get('path')}` (method {parent.get('method')})")
    lines += [
        f"- command: `{manifest.command}`",
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(manifest.parameters, indent=2, sort_keys=True),
        "```",
        "",
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "```",
        "",
        "## Results",
        "",
        results_markdown or "Not evaluated yet: run `compress eval` on this directory.",
        "",
    ]
    (directory / "README.md").write_text("\n".join(lines))
