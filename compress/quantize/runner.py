"""Quantize a model (or artifact) into a new artifact: load, transform, save, manifest.

Making an artifact and running one are separate: this package makes them; loading is plain
`transformers` for the dense formats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compress import console
from compress.artifact import (
    Manifest,
    api_call,
    check_output_path,
    copy_tokenizer_files,
    device_description,
    library_versions,
    lineage_for,
    save_model_files,
    staged_directory,
    weight_statistics,
    write_manifest,
    write_model_card,
)
from compress.data import sample_windows
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    count_parameters,
    discover_layout,
    load_config,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_model,
)
from compress.quantize.cast import CAST_DTYPES, FORMAT, check_finite, check_finite_files
from compress.quantize.config import PACKED_METHODS, QuantizeConfig
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


@dataclass
class _Produced:
    """What a method family hands back: the transformed model and how to write it."""

    model: nn.Module
    format: str
    write: Callable[[Path], None]
    calibration: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _cast(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer
) -> _Produced:
    with timer.phase("load_and_cast"):
        loaded = load_model(source, CAST_DTYPES[config.method], config.device, trust_remote_code)
        check_finite(loaded, config.method)
    return _Produced(loaded, FORMAT, lambda staging: save_model_files(loaded, source.path, staging))


def _bnb(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer
) -> _Produced:
    from compress.quantize.bnb import BNB_FORMAT, load_bnb_quantized, save_bnb

    with timer.phase("load_and_quantize"):
        check_finite_files(source.path)
        loaded = load_bnb_quantized(
            source, config.method, config.double_quant, config.compute_dtype, config.device, trust_remote_code
        )

    def write(staging: Path) -> None:
        save_bnb(loaded, staging)
        copy_tokenizer_files(source.path, staging)

    return _Produced(loaded, BNB_FORMAT[config.method], write)


def _calibration_windows(model: nn.Module, source: ModelSource, config: QuantizeConfig):
    """`--calib`, else a well-known hub dataset online, else text sampled from the model itself."""
    from compress.quantize.datafree import DEFAULT_CALIBRATION, model_generated_windows

    tokenizer = load_tokenizer(source)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or config.seq_len
    seq_len = min(config.seq_len, limit)
    if config.calib:
        return sample_windows(tokenizer, config.calib, config.calib_samples, seq_len, config.seed)
    try:
        windows = sample_windows(tokenizer, DEFAULT_CALIBRATION, config.calib_samples, seq_len, config.seed)
        console.notice(f"calibrating on {DEFAULT_CALIBRATION} (pass --calib to choose the text)")
        return windows
    except CompressError:
        console.notice(
            "no --calib and the hub is unreachable: calibrating on text sampled from the model itself"
        )
        return model_generated_windows(model, config.calib_samples, seq_len, config.seed)


def _packed(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer
) -> _Produced:
    from compress.quantize.calibrated import check_group_size, quantize_gptq, quantize_rtn
    from compress.quantize.packed import FORMATS, packed_format, write_packed

    with timer.phase("load"):
        loaded = load_model(source, "float32", config.device, trust_remote_code)
        check_finite(loaded, config.method)
        layout = discover_layout(loaded)
    check_group_size(layout, config)
    if config.method == "awq":
        from compress.quantize.awq import check_supported

        check_supported(loaded.config.model_type)
    calibration = None
    if config.method == "rtn":
        with timer.phase("quantize"):
            results = quantize_rtn(layout, config)
    else:
        with timer.phase("calibration_data"):
            windows = _calibration_windows(loaded, source, config)
        calibration = windows.fingerprint.as_dict()
        with timer.phase("quantize"):
            if config.method == "gptq":
                results = quantize_gptq(loaded, layout, windows.input_ids, config)
            else:
                from compress.quantize.awq import quantize_awq

                results = quantize_awq(loaded, layout, windows.input_ids, config)

    def write(staging: Path) -> None:
        try:
            write_packed(loaded, results, config, staging)
        except ValueError as exc:
            raise CompressError(f"cannot pack the {config.method} result: {exc}") from exc
        copy_tokenizer_files(source.path, staging)

    extra = {"layers": {r.name: {"group_size": r.weight.group_size, **r.stats} for r in results}}
    fmt = packed_format(config, results)
    if config.method == "awq" and fmt != "awq":
        console.notice("the AWQ GEMM layout cannot hold these layer widths; writing the GPTQ layout instead")
    return _Produced(loaded, FORMATS[fmt], write, calibration, extra)


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
    **options: Any,
) -> Path:
    """Quantize `model` (a directory, hub id or artifact) and write an artifact; returns its path.

    `options` are the other `QuantizeConfig` fields (group_size, sym, act_order, calib, …).
    """
    config = QuantizeConfig.from_options(method, bits, device=device, **options)
    target_device = resolve_device(config.device)
    source = resolve_model(model)
    out_path = Path(out) if out is not None else default_output(source, config.method)
    check_output_path(out_path, force, inputs=(source.path,))
    _reject_quantized(source, trust_remote_code)

    timer = PhaseTimer()
    if config.method in CAST_DTYPES:
        produced = _cast(source, config, trust_remote_code, timer)
    elif config.method in PACKED_METHODS:
        produced = _packed(source, config, trust_remote_code, timer)
    else:
        produced = _bnb(source, config, trust_remote_code, timer)
    # The source's own count: packed and bitsandbytes tensors hide how many weights they stand for.
    parameters = weight_statistics(source.path)["parameters"] or count_parameters(produced.model)
    with staged_directory(out_path, force) as staging:
        with timer.phase("save"):
            produced.write(staging)
        manifest = Manifest(
            command=command or api_call("quantize", model, out_path, **config.model_dump()),
            lineage=lineage_for(source),
            method=config.method,
            parameters=config.model_dump(),
            format=produced.format,
            calibration=produced.calibration,
            seed=config.seed if produced.calibration else None,
            model={
                "architecture": type(produced.model).__name__,
                "model_type": produced.model.config.model_type,
                "parameters": parameters,
                "dtype": str(next(produced.model.parameters()).dtype).removeprefix("torch."),
            },
            phases=timer.as_dicts(),
            libraries=library_versions(),
            device=device_description(target_device),
            extra=produced.extra,
        )
        write_manifest(staging, manifest)
        write_model_card(staging, manifest)
    return out_path
