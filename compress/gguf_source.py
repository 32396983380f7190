"""GGUF files as model sources: read once through transformers, then an ordinary model directory.

Every technique works on a transformers model directory (safetensors + config.json). A GGUF
(llama.cpp's format) is turned into one by transformers' own GGUF reader, which dequantizes every
tensor, and the result is cached under the file's sha256, so a second command on the same file
starts at once. The lineage keeps what the directory alone would lose: the GGUF's path, sha256 and
the block types its tensors were stored in (a model that went through Q4_1 is not the original).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from compress.cache import cache_root
from compress.errors import CompressError

PROVENANCE_NAME = "gguf.json"
#: Tensor types transformers dequantizes into exactly these torch dtypes; anything else (block
#: quantized, or float32) is kept exact in float32.
_FLOAT_TYPES = {"F16": "float16", "BF16": "bfloat16"}


def gguf_file_in(path: Path) -> Path | None:
    """`path` itself when it is a .gguf file, or the one .gguf in a directory without config.json."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:3])
            raise CompressError(f"'{path}' holds several GGUF files ({names}); pass one of them")
        return found[0] if found else None
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise CompressError("reading a GGUF file needs the `gguf` package: pip install gguf") from exc
    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise CompressError(f"'{path}' is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc


def _tensor_types(path: Path) -> dict[str, int]:
    """How many tensors the file stores in each GGML type (Q4_1, Q8_0, F32, …)."""
    return dict(sorted(Counter(tensor.tensor_type.name for tensor in _reader(path).tensors).items()))


def gguf_statistics(path: Path) -> dict[str, Any]:
    """Sizes and parameter counts of a GGUF, as `artifact.weight_statistics` gives them for
    safetensors: bits per weight over tensor data (llama.cpp's convention), parameters by type."""
    reader = _reader(path)
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    by_type: Counter[str] = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_elements)
    field = reader.fields.get("general.architecture")
    return {
        "architecture": field.contents() if field is not None else None,
        "weight_files": [path.name],
        "weight_bytes": path.stat().st_size,
        "parameters": parameters,
        "parameters_by_dtype": dict(sorted(by_type.items())),
        "tensor_bytes": data_bytes,
        "bits_per_weight": round(8 * data_bytes / parameters, 4) if parameters else None,
    }


def _storage_dtype(types: dict[str, int]) -> str:
    """float16/bfloat16 for a GGUF whose weights are all F16/BF16 (norms are F32 in every GGUF),
    float32 for anything block-quantized, whose dequantized values only float32 holds exactly."""
    weights = set(types) - {"F32"}
    if len(weights) == 1 and (name := next(iter(weights))) in _FLOAT_TYPES:
        return _FLOAT_TYPES[name]
    return "float32"


def _convert(gguf: Path, out: Path, dtype_name: str) -> None:
    """Dequantize `gguf` into a model directory at `out`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        try:
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CompressError(f"transformers cannot read '{gguf}': {first}") from exc
        # transformers refuses to save a model it loaded from GGUF ("quantized with gguf"): the same
        # weights go into a plain model built from the config without its quantization entry.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier conversion
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_gguf(gguf: Path) -> tuple[Path, dict[str, Any]]:
    """The cached model directory for `gguf` (converted on first use) and its provenance."""
    gguf = gguf.resolve()
    digest = _sha256(gguf)
    out = cache_root() / "gguf" / f"{gguf.stem}-{digest[:16]}"
    provenance_file = out / PROVENANCE_NAME
    if provenance_file.is_file():  # the same bytes may sit at another path now: record this one
        return out, {**json.loads(provenance_file.read_text()), "file": str(gguf)}
    types = _tensor_types(gguf)
    dtype = _storage_dtype(types)
    out.parent.mkdir(parents=True, exist_ok=True)
    _convert(gguf, out, dtype)
    provenance = {"file": str(gguf), "sha256": digest, "tensor_types": types, "converted_dtype": dtype}
    provenance_file.write_text(json.dumps(provenance, indent=2) + "\n")  # last: marks it complete
    return out, provenance
