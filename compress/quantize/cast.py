"""fp16 and bf16: a plain cast of every floating-point weight, saved as dense safetensors.

The model is loaded straight into the target dtype (no fp32 copy in memory). fp16 overflows above
65504, so the cast result is checked for non-finite values rather than silently saving `inf`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.checkpoint import CheckpointReader
from compress.errors import CompressError

CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_finite(model: nn.Module, method: str) -> None:
    """Refuse a model whose weights are NaN/Inf (in the source, or after the cast overflowed)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CompressError(
                f"weight '{name}' has NaN or Inf values after the {method} cast; "
                "the source model is broken or its values exceed the format's range (try bf16)"
            )


def check_finite_files(directory: Path) -> None:
    """Refuse NaN/Inf in a checkpoint, reading a few MB of one tensor at a time (no model in memory,
    not even its embedding: `--max-memory` runs this first)."""
    reader = CheckpointReader(directory)
    for name in reader.names():
        if not reader.dtype(name).is_floating_point:
            continue
        for _, rows in reader.row_chunks(name):
            if not torch.isfinite(rows).all():
                raise CompressError(f"weight '{name}' has NaN or Inf values; the source model is broken")
