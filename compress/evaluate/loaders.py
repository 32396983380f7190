"""How the harness loads each artifact format: a registry from format name to loader.

Dense formats load with plain `transformers`. Quantized formats (bitsandbytes, packed GPTQ/AWQ)
register their loader here when they land, so the harness itself never changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from compress.artifact import DENSE_FORMAT, read_manifest
from compress.errors import CompressError
from compress.modeling import ModelSource, load_model

Loader = Callable[[ModelSource, str, str], nn.Module]  # (source, device, dtype) -> model in eval mode

_LOADERS: dict[str, Loader] = {}


def register_loader(format_name: str, loader: Loader) -> None:
    _LOADERS[format_name] = loader


#: A GGUF file (from `export gguf`, or any llama.cpp model): scored by llama.cpp when it is built.
GGUF_FORMAT = "gguf"
#: Our packed GPTQ/AWQ layouts, written by us or by other tools (`quantization_config`).
PACKED_FORMATS = ("gptq-packed", "awq-gemm", "transformers-gptq", "transformers-awq")


def artifact_format(source: ModelSource) -> str:
    """The format named by the manifest, else by `quantization_config`, else dense."""
    if source.gguf:
        return GGUF_FORMAT
    manifest = read_manifest(source.path)
    if manifest is not None:
        return manifest.format
    config = json.loads((source.path / "config.json").read_text())
    quantization = config.get("quantization_config")
    if quantization:
        return f"transformers-{quantization.get('quant_method', 'unknown')}"
    return DENSE_FORMAT


def load_for_eval(source: ModelSource, device: str, dtype: str) -> nn.Module:
    """Load any artifact or model for scoring; a directory that does not load is a one-line error."""
    format_name = artifact_format(source)
    if format_name not in _LOADERS:
        known = ", ".join(sorted(_LOADERS))
        raise CompressError(f"'{source.reference}' has format '{format_name}'; loaders exist for: {known}")
    try:
        return _LOADERS[format_name](source, device, dtype)
    except CompressError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompressError(f"'{source.reference}' does not load: {first_line}") from exc


def _load_dense(source: ModelSource, device: str, dtype: str) -> nn.Module:
    return load_model(source, dtype=dtype, device=device)


def _load_packed(source: ModelSource, device: str, dtype: str) -> nn.Module:
    from compress.quantize.packed import load_packed

    return load_packed(source, device, dtype)


def _load_bnb(source: ModelSource, device: str, dtype: str) -> nn.Module:
    from compress.quantize.bnb import load_bnb_for_eval

    return load_bnb_for_eval(source, device, dtype)


def _load_gguf(source: ModelSource, device: str, dtype: str) -> nn.Module:
    """llama.cpp running the file itself, as its users run it (threads and KV cache recorded);
    without llama.cpp, transformers' dequantized float copy, with a notice saying so."""
    from compress import console, llamacpp
    from compress.modeling import load_config

    if not llamacpp.available():
        console.notice(
            f"{source.reference}: scored through transformers (dequantized), not llama.cpp; "
            f"{llamacpp.HOW_TO_GET} to score it as llama.cpp runs it"
        )
        return _load_dense(source, device, dtype)
    if device not in ("auto", "cpu"):
        raise CompressError("llama.cpp here is built for CPUs; evaluate GGUF files with --device cpu")
    return llamacpp.load_gguf_runtime(Path(source.gguf["file"]), load_config(source))


register_loader(DENSE_FORMAT, _load_dense)
register_loader(GGUF_FORMAT, _load_gguf)
for _packed_format in PACKED_FORMATS:
    register_loader(_packed_format, _load_packed)
for _bnb_format in ("bnb-int8", "bnb-4bit", "transformers-bitsandbytes"):
    register_loader(_bnb_format, _load_bnb)
