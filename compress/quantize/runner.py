"""Quantize a model (or artifact) into a new artifact: load, transform, save, manifest.

Making an artifact and running one are separate: this package makes them; loading is plain
`transformers` for the dense formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from compress import console
from compress.architecture import architecture_of, require_linear_weights
from compress.artifact import (
    DENSE_FORMAT,
    api_call,
    copy_tokenizer_files,
    new_manifest,
    publish,
    save_model_files,
    weight_statistics,
)
from compress.calibration_text import calibration_windows
from compress.errors import CompressError, UnsupportedArchitectureError
from compress.modeling import (
    ModelSource,
    count_parameters,
    discover_layout,
    load_model,
    reject_quantized,
    resolve_device,
    resolve_model,
)
from compress.options import parse_options
from compress.ownership import check_output_dir, command_inputs
from compress.quantize.cast import CAST_DTYPES, check_finite, check_finite_files
from compress.quantize.config import PACKED_METHODS, QuantizeConfig
from compress.staging import staged_directory
from compress.telemetry import PhaseTimer

if TYPE_CHECKING:
    from compress.data import TokenWindows
    from compress.streaming import StreamedModel

__all__ = ["QuantizeConfig", "default_output", "quantize"]

#: A streamed run holds the shard being filled: a 32nd of `--max-memory` (SmolLM2 at 134 MB: 4 MB
#: shards, where an eighth held up to 17 MB of packed blocks, a fifth of the floor, for 4× fewer files).
STREAMED_SHARDS_PER_BUDGET = 32


def default_output(source: ModelSource, method: str) -> Path:
    """`./compressed/<model>-<method>`, the SPEC's default `--out`."""
    name = Path(source.reference.rstrip("/")).name or "model"
    return Path("compressed") / f"{name}-{method}"


@dataclass
class _Produced:
    """What a method family hands back once it has written its files into the staging directory."""

    model: nn.Module
    format: str
    calibration: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _cast(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer, staging: Path
) -> _Produced:
    with timer.phase("load_and_cast"):
        loaded = load_model(source, CAST_DTYPES[config.method], config.device, trust_remote_code)
        check_finite(loaded, config.method)
    with timer.phase("save"):
        save_model_files(loaded, source.path, staging)
    return _Produced(loaded, DENSE_FORMAT)


def _bnb(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer, staging: Path
) -> _Produced:
    from compress.quantize.bnb import BNB_FORMAT, load_bnb_quantized, save_bnb

    with timer.phase("load_and_quantize"):
        check_finite_files(source.path)
        loaded = load_bnb_quantized(
            source, config.method, config.double_quant, config.compute_dtype, config.device, trust_remote_code
        )
    with timer.phase("save"):
        save_bnb(loaded, staging)
        copy_tokenizer_files(source.path, staging)
    return _Produced(loaded, BNB_FORMAT[config.method])


def _check_memory_budget(
    streamed: StreamedModel, config: QuantizeConfig, windows: TokenWindows | None
) -> None:
    """One float32 block plus the calibration activations (a block's inputs and outputs) must fit."""
    block = streamed.block_bytes()
    activations = 0
    if windows is not None:
        hidden = streamed.model.config.get_text_config().hidden_size
        activations = 2 * windows.input_ids.numel() * hidden * 4
    if block + activations > config.max_memory_bytes:
        raise CompressError(
            f"--max-memory {config.max_memory} is below one block in float32 ({block / 1e6:.1f} MB) plus "
            f"the calibration activations ({activations / 1e6:.1f} MB); raise it, or lower "
            "--calib-samples or --seq-len"
        )


def _packed(
    source: ModelSource, config: QuantizeConfig, trust_remote_code: bool, timer: PhaseTimer, staging: Path
) -> _Produced:
    """RTN, GPTQ and AWQ: each block is packed into the artifact as soon as it is quantized."""
    from compress.calibrate import no_hook
    from compress.checkpoint import DEFAULT_SHARD_BYTES
    from compress.experts import unfuse_experts
    from compress.memory import prefer_mmap_for_large_allocations
    from compress.quantize.calibrated import check_group_size, quantize_gptq, quantize_rtn, with_default_group
    from compress.quantize.packed import FORMATS, PackedWriter, layer_shapes, packed_format
    from compress.quantize.vocab import quantize_vocab, vocab_plan
    from compress.streaming import StreamedModel

    streamed = None
    with timer.phase("load"):
        if config.max_memory is None:
            model = load_model(source, "float32", config.device, trust_remote_code, require_finite=True)
            unfuse_experts(model)  # a mixture of experts: one linear pair per expert, quantized apart
            layout = discover_layout(model)
        else:
            # Before the first byte is read: the finiteness check's chunks would otherwise grow a heap
            # that the run's tensors are later carved from (memory.py).
            prefer_mmap_for_large_allocations()
            check_finite_files(source.path)
            streamed = StreamedModel(source, resolve_device(config.device), trust_remote_code)
            model, layout = streamed.model, streamed.layout
    check_group_size(layout, config)
    config = with_default_group(layout, config)
    shapes = layer_shapes(layout, config)
    _note_small_groups(shapes)
    fmt = packed_format(config, shapes)
    if config.method == "awq" and fmt != "awq":
        console.notice(
            "the AWQ GEMM layout holds only 4-bit layers with output widths a multiple of 8, and no "
            "quantized head or embedding; writing the GPTQ layout instead"
        )
    windows = None
    if config.method != "rtn":
        with timer.phase("calibration_data"):
            windows = calibration_windows(
                model,
                source,
                config.calib,
                config.calib_samples,
                config.seq_len,
                config.seed,
                streamed is not None,
            )
    shard_bytes = DEFAULT_SHARD_BYTES
    if streamed is not None:
        _check_memory_budget(streamed, config, windows)
        shard_bytes = min(shard_bytes, max(config.max_memory_bytes // STREAMED_SHARDS_PER_BUDGET, 1))
    writer = PackedWriter(staging, source, model, config, fmt, shard_bytes)

    def block_done(index: int, block: nn.Module, results: list) -> None:
        writer.write_block(index, block, results)
        if streamed is not None:
            streamed.release_block(index, block)

    hooks = {
        "before_block": streamed.load_block if streamed else no_hook,
        "block_done": block_done,
        "layer_done": writer.pack_layer,
    }
    with timer.phase("quantize"):
        input_ids = windows.input_ids if windows is not None else None
        if streamed is not None and input_ids is not None:
            input_ids = streamed.calibration_input_ids(input_ids)
        if config.method == "rtn":
            results = quantize_rtn(layout, config, **hooks)
        elif config.method == "gptq":
            results = quantize_gptq(model, layout, input_ids, config, **hooks)
        else:
            from compress.quantize.awq import quantize_awq

            results = quantize_awq(model, layout, input_ids, config, **hooks)
        vocab = vocab_plan(model, config.head_bits, config.embedding_bits)
        vocab_results = quantize_vocab(
            vocab, writer.vocab_weights(vocab), config.nominal_group_size, config.symmetric
        )
    with timer.phase("save"):
        writer.finish(results, vocab, vocab_results)
        copy_tokenizer_files(source.path, staging)
    extra = {"layers": {r.name: {"group_size": r.group_size, **r.stats} for r in [*results, *vocab_results]}}
    calibration = windows.fingerprint.as_dict() if windows is not None else None
    return _Produced(model, FORMATS[fmt], calibration, extra)


#: Below this group size a layer's scales and zero points cost more bits than its weights, and
#: no kernel takes it (padding it to 32 would more than double it).
SMALL_GROUP = 16


def _note_small_groups(shapes: list[tuple[int, int, int]]) -> None:
    """One line when a width forces tiny groups (1382 = 2 × 691: groups of 2), which are large on
    disk and slow at run time, with what avoids it."""
    small = sorted({(width, group) for width, _, group in shapes if group < SMALL_GROUP})
    if small:
        widths = ", ".join(f"{width} → groups of {group}" for width, group in small)
        console.notice(
            f"input widths with no divisor between {SMALL_GROUP} and the group size ({widths}) get tiny "
            "groups: large on disk and run on the slow path; use --group-size -1, or widths that are "
            "multiples of 64 (compress prune --mlp keeps them so)"
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
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Quantize `model` (a directory, hub id or artifact) and write an artifact; returns its path.

    `options` are the other `QuantizeConfig` fields (group_size, sym, act_order, calib, …); `recipe`
    names the recipe stage that asked for it, recorded in the manifest.
    """
    config = parse_options(QuantizeConfig, {"method": method, "bits": bits, "device": device, **options})
    target_device = resolve_device(config.device)
    config = config.for_device(target_device)
    source = resolve_model(model)
    out_path = Path(out) if out is not None else default_output(source, config.method)
    inputs = command_inputs(source, options=config)
    check_output_dir(out_path, force, inputs)
    reject_quantized(source, trust_remote_code)
    facts = architecture_of(source.path, trust_remote_code)
    if facts.is_moe and config.method in PACKED_METHODS and config.max_memory is not None:
        raise UnsupportedArchitectureError(
            f"--max-memory does not stream the mixture-of-experts model '{facts.model_type}' yet; "
            "leave it out"
        )
    if config.method not in CAST_DTYPES and not (config.method in PACKED_METHODS and facts.unfusable):
        require_linear_weights(facts, f"--method {config.method}", "use rtn, gptq, awq, fp16 or bf16")

    timer = PhaseTimer()
    if config.method in CAST_DTYPES:
        produce = _cast
    elif config.method in PACKED_METHODS:
        produce = _packed
    else:
        produce = _bnb
    with staged_directory(out_path, force, inputs=inputs) as staging:
        produced = produce(source, config, trust_remote_code, timer, staging)
        # The source's own count: packed and bitsandbytes tensors hide how many weights they stand for.
        parameters = weight_statistics(source.path)["parameters"] or count_parameters(produced.model)
        manifest = new_manifest(
            method=config.method,
            config=config,
            source=source,
            command=command or api_call("quantize", model, out_path, **config.model_dump()),
            recipe=recipe,
            format=produced.format,
            phases=timer.as_dicts(),
            device=target_device,
            calibration=produced.calibration,
            seed=config.seed if produced.calibration else None,
            extra=produced.extra,
        )
        publish(staging, manifest, produced.model, parameters)
    return out_path
