"""GGUF files as model sources: read once through transformers, then an ordinary model directory.

Every technique works on a transformers model directory (safetensors + config.json). A GGUF
(llama.cpp's format) is turned into one by transformers' own GGUF reader, which dequantizes every
tensor, and the result is cached under the file's sha256, so a second command on the same file
starts at once. The lineage keeps what the directory alone would lose: the GGUF's path, sha256 and
the block types its tensors were stored in (a model that went through Q4_1 is not the original).

transformers completes an incomplete file without a word: a tensor the file lacks is initialised
at random, and a missing `<arch>.block_count` becomes its config class's default (32 layers, 27 of
them random for a 5-layer file). So the header is checked first (`check_complete`: the metadata
keys whose defaults would stand in, and every tensor the config implies, by the `gguf` package's
names), before anything is dequantized, and transformers' own loading report is checked again
after; either refusal leaves nothing in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from compress.architecture import inspect_architecture
from compress.cache import cache_root
from compress.errors import CompressError

PROVENANCE_NAME = "gguf.json"
#: Tensor types transformers dequantizes into exactly these torch dtypes; anything else (block
#: quantized, or float32) is kept exact in float32.
_FLOAT_TYPES = {"F16": "float16", "BF16": "bfloat16"}
#: Metadata keys (after `<arch>.`) that llama.cpp requires and transformers replaces, when absent,
#: by its config class's default: 32 blocks, 4096 wide, 32 heads, … (only those it maps for the
#: file's architecture are asked for). Keys both default alike (head_count_kv → head_count, rope
#: base 10000, vocab_size → the token list) may be absent.
_REQUIRED_KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon",
)
#: The tokenizer keys transformers and llama.cpp both need.
_TOKENIZER_KEYS = {"tokenizer.ggml.model": "the tokenizer's kind", "tokenizer.ggml.tokens": "the vocabulary"}
#: How many names a refusal lists before "and N more".
_LISTED = 3


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


def _tensor_types(reader: Any) -> dict[str, int]:
    """How many tensors the file stores in each GGML type (Q4_1, Q8_0, F32, …)."""
    return dict(sorted(Counter(tensor.tensor_type.name for tensor in reader.tensors).items()))


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _name_preserving_processor(architecture: str) -> type | None:
    """transformers' tensor processor for `architecture` when it keeps every GGUF tensor's name and
    element count (permutes, shifts norms, adds a unit axis), so the header alone says what loads;
    None for those that split or merge tensors (MoE experts, fused QKV), left to the loading report."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    names = {"TensorProcessor", "LlamaTensorProcessor", "Gemma2TensorProcessor"}
    names |= {"NemotronTensorProcessor", "Lfm2TensorProcessor"}
    return processor if processor.__name__ in names else None


def check_complete(gguf: Path, reader: Any | None = None) -> None:
    """Refuse, from the header alone and before any dequantization, a GGUF that transformers would
    turn into a partly random model: a required metadata key missing, a tensor the config implies
    missing or of another size, or a block tensor the config has no place for (dropped silently)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    reader = reader if reader is not None else _reader(gguf)
    field = reader.fields.get("general.architecture")
    if field is None:
        raise CompressError(f"'{gguf}' has no general.architecture key, so no model can be built from it")
    architecture = str(field.contents())
    mapped = GGUF_CONFIG_MAPPING.get(architecture, {})
    for key in _REQUIRED_KEYS:
        if key in mapped and f"{architecture}.{key}" not in reader.fields:
            raise CompressError(
                f"'{gguf}' lacks the metadata key '{architecture}.{key}' ({mapped[key]}); "
                "transformers would use its own default in its place"
            )
    for key, what in _TOKENIZER_KEYS.items():
        if key not in reader.fields:
            raise CompressError(f"'{gguf}' lacks the metadata key '{key}' ({what}), so it has no tokenizer")
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
        raise CompressError(f"transformers cannot read '{gguf}': {_first_line(exc)}") from exc
    inspect_architecture(config)  # a model compress cannot walk is refused before dequantizing
    processor = _name_preserving_processor(architecture)
    if processor is None:
        return
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = AutoModelForCausalLM.from_config(config)
    try:
        gguf_to_hf = get_gguf_hf_weights_map(model, processor(config=config.to_dict()))
    except (NotImplementedError, ValueError, KeyError):
        return  # a model type gguf-py has no name map for: the loading report decides
    hf_to_gguf = {hf: name for name, hf in gguf_to_hf.items()}
    shapes = {name: tuple(value.shape) for name, value in model.named_parameters()}  # tied ones once
    present = {tensor.name: tensor for tensor in reader.tensors}
    missing = sorted(hf_to_gguf.get(hf, hf) for hf in shapes if hf_to_gguf.get(hf) not in present)
    if missing:
        raise CompressError(
            f"'{gguf}' lacks {len(missing)} tensor(s) its metadata implies ({_listed(missing)}); "
            "transformers would initialise them at random"
        )
    for name, tensor in present.items():
        hf = gguf_to_hf.get(name)
        if hf in shapes and int(tensor.n_elements) != (expected := int(torch.Size(shapes[hf]).numel())):
            raise CompressError(
                f"'{gguf}': tensor '{name}' holds {int(tensor.n_elements)} values where its metadata "
                f"implies {expected} ({hf} {list(shapes[hf])})"
            )
    unused = sorted(name for name in present if name not in gguf_to_hf and name.startswith("blk."))
    if unused:
        raise CompressError(
            f"'{gguf}' holds block tensor(s) the model its metadata describes ({config.num_hidden_layers} "
            f"blocks) has no place for ({_listed(unused)}); transformers would drop them"
        )


def _check_loading_report(gguf: Path, report: dict[str, Any]) -> None:
    """The second guard, for every architecture: what transformers' own loading report says it
    initialised at random or could not fit."""
    missing = sorted(report.get("missing_keys") or ())
    mismatched = sorted(
        str(entry[0] if isinstance(entry, tuple) else entry) for entry in report.get("mismatched_keys") or ()
    )
    if missing:
        raise CompressError(
            f"'{gguf}' lacks {len(missing)} tensor(s) the model needs ({_listed(missing)}); "
            "transformers would initialise them at random"
        )
    if mismatched:
        raise CompressError(f"'{gguf}' holds tensor(s) of the wrong shape ({_listed(mismatched)})")


def _convert(gguf: Path, out: Path, dtype_name: str) -> None:
    """Dequantize `gguf` into a model directory at `out`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        try:
            loaded, report = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=dtype, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
            raise CompressError(f"transformers cannot read '{gguf}': {_first_line(exc)}") from exc
        _check_loading_report(gguf, report)
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
    reader = _reader(gguf)
    check_complete(gguf, reader)
    types = _tensor_types(reader)
    dtype = _storage_dtype(types)
    created = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _convert(gguf, out, dtype)
    except BaseException:
        for folder in created:  # leave the cache as it was: no empty folders for a refused file
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    provenance = {"file": str(gguf), "sha256": digest, "tensor_types": types, "converted_dtype": dtype}
    provenance_file.write_text(json.dumps(provenance, indent=2) + "\n")  # last: marks it complete
    return out, provenance
