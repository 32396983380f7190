"""Quantize a model (or artifact) into a new artifact: load, transform, save, manifest.

Making an artifact and running one are separate: this package makes them; loading is plain
`transformers` for the dense formats.
"""

from __future__ import annotations

from pathlib import Path

from compress.artifact import (
    Manifest,
    api_call,
    check_output_path,
    device_description,
    library_versions,
    lineage_for,
    save_model_files,
    staged_directory,
    write_manifest,
    write_model_card,
)
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    count_parameters,
    load_config,
    load_model,
    resolve_device,
    resolve_model,
)
from compress.quantize.cast import CAST_DTYPES, FORMAT, check_finite
from compress.quantize.config import QuantizeConfig
from compress.telemetry import PhaseTimer

__all__ = ["QuantizeConfig", "default_output", "quantize"]


def default_output(source: ModelSource, method: str) -> Path:
    """`./compressed/<model>-<method>`, the SPEC's default `--out`."""
    name = Path(source.reference.rstrip("/")).name or "model"
    return Path("compressed") / f"{name}-{method}"


def _reject_quantized(source: ModelSource, trust_remote_code: bool) -> None:
    config = load_config(source, trust_remote_code)
    existing = getattr(config, "quantization_config", None)
    if existing:
        kind = (
            existing.get("quant_method", "unknown") if isinstance(existing, dict) else type(existing).__name__
        )
        raise CompressError(
            f"'{source.reference}' is already quantized ({kind}); quantize the original model instead"
        )


def quantize(
    model: str | Path,
    out: str | Path | None = None,
    *,
    method: str | None = None,
    bits: int | None = None,
    device: str = "auto",
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
) -> Path:
    """Quantize `model` (a directory, hub id or artifact) and write an artifact; returns its path."""
    config = QuantizeConfig.from_options(method, bits, device=device)
    target_device = resolve_device(config.device)
    source = resolve_model(model)
    out_path = Path(out) if out is not None else default_output(source, config.method)
    check_output_path(out_path, force, inputs=(source.path,))
    _reject_quantized(source, trust_remote_code)

    timer = PhaseTimer()
    with timer.phase("load_and_cast"):
        loaded = load_model(source, CAST_DTYPES[config.method], config.device, trust_remote_code)
        check_finite(loaded, config.method)
    with staged_directory(out_path, force) as staging:
        with timer.phase("save"):
            save_model_files(loaded, source.path, staging)
        manifest = Manifest(
            command=command or api_call("quantize", model, out_path, **config.model_dump()),
            lineage=lineage_for(source),
            method=config.method,
            parameters=config.model_dump(),
            format=FORMAT,
            model={
                "architecture": type(loaded).__name__,
                "model_type": loaded.config.model_type,
                "parameters": count_parameters(loaded),
                "dtype": str(CAST_DTYPES[config.method]).removeprefix("torch."),
            },
            phases=timer.as_dicts(),
            libraries=library_versions(),
            device=device_description(target_device),
        )
        write_manifest(staging, manifest)
        write_model_card(staging, manifest)
    return out_path
