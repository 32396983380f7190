"""compress: make causal language models cheaper to run, and prove what it cost in quality.

The Python API is what the CLI calls, so notebooks and tests run exactly the same code:

    import compress
    path = compress.quantize("./my-model", "out/fp16", method="fp16")
    compress.inspect(path)

Names are imported on first use, so `compress --help` does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from compress.errors import CompressError
from compress.version import __version__

_LAZY = {
    "quantize": ("compress.quantize", None),  # a callable package: see callable_module.py
    "QuantizeConfig": ("compress.quantize.config", "QuantizeConfig"),
    "prune": ("compress.prune", None),  # a callable package too
    "PruneConfig": ("compress.prune.config", "PruneConfig"),
    "distill": ("compress.distill", None),  # callable: compress.distill(teacher, student, out, …)
    "DistillConfig": ("compress.distill.config", "DistillConfig"),
    "inspect": ("compress.artifact", "describe"),
    "read_manifest": ("compress.artifact", "read_manifest"),
    "resolve_model": ("compress.modeling", "resolve_model"),
    "load_model": ("compress.modeling", "load_model"),
    "discover_layout": ("compress.modeling", "discover_layout"),
    "sample_windows": ("compress.data", "sample_windows"),
    "sequential_windows": ("compress.data", "sequential_windows"),
    "demo_model": ("compress.demo", "demo_model"),
}

__all__ = ["CompressError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'compress' has no attribute '{name}'")
    module_name, attribute = _LAZY[name]
    module = import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value
