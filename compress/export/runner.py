"""`compress export gguf`: a model or artifact as a GGUF artifact directory llama.cpp runs.

The artifact is a directory like every other (`<name>.gguf`, `compress.json`, a model card), so
`compress eval` stores its results beside it and `compress compare` lists it; llama.cpp takes the
.gguf inside (`llama-cli -m DIR/NAME.gguf`), and the manifest also travels inside the file
(`compress.manifest`), so a .gguf copied elsewhere still says how it was made.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from compress.artifact import (
    DENSE_FORMAT,
    api_call,
    new_manifest,
    publish,
    weight_statistics,
)
from compress.errors import CompressError
from compress.export.config import FLOAT_TYPES, LOSSLESS_TYPES, ExportConfig
from compress.export.vocab import GGUFVocab
from compress.export.writer import check_architecture, write_gguf
from compress.modeling import ModelSource, count_parameters, load_config, load_model, resolve_model
from compress.options import parse_options
from compress.ownership import check_output_dir, command_inputs
from compress.staging import staged_directory
from compress.telemetry import PhaseTimer

FORMAT = "gguf"
#: Calibration windows for an importance matrix when none are asked for (llama.cpp's own examples
#: use about a hundred chunks of 512 tokens).
DEFAULT_IMATRIX_SAMPLES = 128


def default_output(source: ModelSource, file_type: str) -> Path:
    """`./compressed/<model>-gguf-<type>`."""
    name = Path(source.reference.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path("compressed") / f"{name}-gguf-{file_type}"


def _load(source: ModelSource, trust_remote_code: bool) -> tuple[torch.nn.Module, bool]:
    """The model in float32 (packed layers stay packed, so their integers can go over as they are),
    and whether it has packed layers."""
    from compress.evaluate.loaders import PACKED_FORMATS, artifact_format

    check_architecture(load_config(source, trust_remote_code))
    kind = artifact_format(source)
    if kind in PACKED_FORMATS:
        from compress.quantize.packed import load_packed
        from compress.quantize.vocab import EMBEDDING_KEY

        if EMBEDDING_KEY in (load_config(source, trust_remote_code).quantization_config or {}):
            raise CompressError(
                "this artifact's embedding table is quantized (--embedding-bits), which GGUF export does not "
                "carry over; export the source model (llama.cpp quantizes the embedding its own way)"
            )
        return load_packed(source, "cpu", "float32"), True
    if kind != DENSE_FORMAT:
        raise CompressError(f"GGUF export reads dense models and GPTQ/AWQ/RTN artifacts, not '{kind}' ones")
    return load_model(source, dtype=torch.float32, device="cpu", trust_remote_code=trust_remote_code), False


def _lossless_type(config: ExportConfig, packed: bool) -> str | None:
    """The block type packed layers must already be in; a packed artifact refuses other quantized types."""
    if not packed or config.type in FLOAT_TYPES:
        return None
    if config.type not in LOSSLESS_TYPES:
        raise CompressError(
            f"a packed artifact cannot become {config.type} without rounding its weights again; export it as "
            "q4_0 (4-bit --sym --group-size 32), q8_0 (8-bit --sym --group-size 32) or f16, or export the "
            "source model to get llama.cpp's own quantization"
        )
    return LOSSLESS_TYPES[config.type]


def _preflight(
    source: ModelSource, config: ExportConfig, trust_remote_code: bool, from_recipe: bool
) -> tuple[ExportConfig, str | None, GGUFVocab]:
    """Every refusal the config files can give, before a weight is read: the architecture, the
    vocabulary (`read_vocab`), a packed artifact's target type, --calib where nothing reads it,
    and a --calib source that cannot be read.

    Returns the config to run (a recipe's calibration data, offered to every stage, is dropped for
    a packed source rather than refused: its blocks go over as they are and never read it), the
    block type packed layers must be in, and the GGUF vocabulary.
    """
    from compress.data import check_readable
    from compress.evaluate.loaders import PACKED_FORMATS, artifact_format
    from compress.export.vocab import read_vocab

    model_config = load_config(source, trust_remote_code)
    check_architecture(model_config)
    vocab = read_vocab(source.path, model_config.vocab_size)
    packed = artifact_format(source) in PACKED_FORMATS
    lossless = _lossless_type(config, packed)
    if packed and config.calib is not None:
        if not from_recipe:
            raise CompressError(
                f"--calib weights llama.cpp's quantizer, which a packed artifact's {config.type} blocks skip "
                "(they go over as they are); drop --calib, or export the source model with it"
            )
        config = config.model_copy(
            update={"calib": None, "calib_samples": None, "seq_len": None, "seed": None}
        )
    if config.calib is not None:  # read after the model loads: a missing or binary file fails now
        check_readable(config.calib)
    return config, lossless, vocab


def _importance_matrix(
    model: torch.nn.Module, source: ModelSource, config: ExportConfig
) -> tuple[dict[str, torch.Tensor], Any]:
    """Mean x² per input column of every block linear over the calibration windows, by GGUF name."""
    from compress.data import sample_windows
    from compress.export.imatrix import importance_matrix
    from compress.export.writer import gguf_names
    from compress.modeling import load_tokenizer

    limit = getattr(model.config, "max_position_embeddings", None) or config.seq_len
    samples = config.calib_samples or DEFAULT_IMATRIX_SAMPLES
    windows = sample_windows(
        load_tokenizer(source),
        config.calib,
        samples,
        min(config.seq_len, limit),
        config.seed,
        at_most=config.calib_samples is None,
    )
    name_of = gguf_names(model.config)
    values = importance_matrix(model, windows.input_ids)
    return {name_of(name): value for name, value in values.items()}, windows


def _tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(path).tensors).items()))


def export_gguf(
    model: str | Path,
    out: str | Path | None = None,
    *,
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Write `model` (a model directory, hub id, GGUF or artifact) as a GGUF artifact; returns its path."""
    from compress import llamacpp

    config = parse_options(ExportConfig, options)
    source = resolve_model(model)
    out_path = Path(out) if out is not None else default_output(source, config.type)
    if out_path.suffix == ".gguf":
        hint = out_path.with_suffix("")
        raise CompressError(f"--out names the artifact directory (the GGUF goes inside it); try --out {hint}")
    inputs = command_inputs(source, options=config)
    check_output_dir(out_path, force, inputs)
    config, lossless, vocab = _preflight(source, config, trust_remote_code, from_recipe=recipe is not None)
    quantized = config.type not in FLOAT_TYPES
    if quantized:
        llamacpp.binding()  # refuse before loading anything when llama.cpp is missing
    threads = config.threads or torch.get_num_threads()
    timer = PhaseTimer()
    with timer.phase("load"):
        loaded, packed = _load(source, trust_remote_code)
    imatrix, windows = None, None
    if quantized and config.calib and not packed:  # only llama.cpp's own rounding reads it
        with timer.phase("importance matrix"):
            imatrix, windows = _importance_matrix(loaded, source, config)
    name = out_path.name
    with staged_directory(out_path, force, inputs=inputs) as staging:
        gguf_file = staging / f"{name}.gguf"
        float_type = FLOAT_TYPES.get(config.type, "F32")
        manifest = new_manifest(
            method=f"gguf-{config.type}",
            config=config,
            source=source,
            command=command or api_call("export_gguf", model, out_path, **config.model_dump()),
            recipe=recipe,
            format=FORMAT,
            phases=timer.as_dicts(),
            device=torch.device("cpu"),
            calibration=windows.fingerprint.as_dict() if windows is not None else None,
            seed=config.seed if windows is not None else None,
        )
        stage = staging / ".stage.gguf" if quantized else gguf_file
        with timer.phase("write gguf"):
            plans = write_gguf(
                loaded,
                vocab,
                stage,
                float_type=float_type,
                lossless=lossless,
                file_type=llamacpp.FILE_TYPE_IDS[config.type],
                name=source.reference,
                manifest=manifest.model_dump(mode="json"),
            )
        if quantized:
            with timer.phase("llama.cpp quantize"):
                llamacpp.quantize_file(stage, gguf_file, config.type, threads, imatrix)
            stage.unlink()
        manifest.phases = timer.as_dicts()
        manifest.extra = {
            "gguf_file": gguf_file.name,
            "tensor_types": _tensor_types(gguf_file),
            "lossless_tensors": sum(plan.exact for plan in plans),
            "llama_cpp_quantizer": quantized,
            "importance_matrix": imatrix is not None,
        }
        parameters = weight_statistics(source.path)["parameters"] or count_parameters(loaded)
        publish(staging, manifest, loaded, parameters, dtype=torch.float32)
    return out_path
