"""Finding, loading and walking causal language models.

Every technique needs the same three things from a model: where its files are (a local directory
or a hub snapshot, with a fingerprint for the manifest's lineage), the loaded `transformers` model
on the right device and dtype, and a map of its decoder blocks and their linear layers. The map is
discovered from the module tree itself (the `ModuleList` with one entry per hidden layer, and the
`Linear`/`Conv1D` modules inside each block), so a new architecture needs no per-call-site code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.architecture import architecture_of, inspect_architecture, needs_remote_code
from compress.checkpoint import open_safetensors
from compress.errors import CompressError, UnsupportedArchitectureError
from compress.gguf_source import convert_gguf, gguf_file_in

MANIFEST_NAME = "compress.json"

#: Files fetched from the hub: configs, tokenizers and safetensors weights (never pickles).
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *_DTYPES)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and what they are, as the manifest's lineage records it."""

    reference: str  # what the user passed: a path or a hub id
    path: Path  # local directory holding config.json
    revision: str | None  # hub commit hash when the model came from the hub
    sha256: str  # fingerprint of the config and weight files
    is_artifact: bool  # the directory was written by `compress` (has compress.json)
    gguf: dict[str, Any] | None = None  # the GGUF file this directory was converted from

    @property
    def user_paths(self) -> tuple[Path, ...]:
        """What the user handed over, which no command may write into or replace: the path as
        given, and the files behind it (a GGUF's file, not the float copy cached from it; a hub
        snapshot's directory)."""
        given = Path(self.reference).expanduser()
        behind = Path(self.gguf["file"]) if self.gguf else self.path
        return (given, behind) if given.exists() else (behind,)

    def lineage(self) -> dict[str, Any]:
        """The manifest's `source`/`parent` entry for this model."""
        entry: dict[str, Any] = {
            "reference": self.reference,
            "path": str(self.path.resolve()),
            "revision": self.revision,
            "sha256": self.sha256,
        }
        if self.gguf:
            entry["gguf"] = self.gguf
        if self.is_artifact:
            manifest = json.loads((self.path / MANIFEST_NAME).read_text())
            entry["method"] = manifest.get("method")
            entry["lineage"] = manifest.get("lineage")
        return entry


def _looks_like_local_path(reference: str) -> bool:
    return (
        reference.startswith((".", "/", "~"))
        or os.path.isabs(reference)
        or reference.count("/") > 1
        or Path(reference).exists()
    )


#: Weight files a fingerprint reads.
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def fingerprint_files(directory: Path) -> str:
    """sha256 over the names and bytes of a model's config and weight files (safetensors, and the
    GGUF of an exported artifact: a fingerprint that skipped it would call every GGUF the same).

    The weights are read in full: a fingerprint of headers or sizes would miss a re-trained model.
    """
    digest = hashlib.sha256()
    names = sorted(
        p.name for p in directory.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES
    )
    for name in names:
        digest.update(name.encode())
        with open(directory / name, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    """Fetch (or find in the local cache) a hub snapshot; every hub failure becomes one sentence."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        # The config first: a model nobody supports is refused before its weights are downloaded.
        config_only = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json"]))
        _check_hub_config(repo_id, config_only / "config.json")
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILE_PATTERNS))
    except HFValidationError as exc:
        raise CompressError(f"'{repo_id}' is neither an existing directory nor a valid hub model id") from exc
    except LocalEntryNotFoundError as exc:
        raise CompressError(
            f"model '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline); download it once with network access or pass a local directory"
        ) from exc
    except GatedRepoError as exc:
        raise CompressError(f"model '{repo_id}' is gated: accept its licence on the hub and log in") from exc
    except RepositoryNotFoundError as exc:
        raise CompressError(f"model '{repo_id}' does not exist on the hub (or is private: log in)") from exc
    except RevisionNotFoundError as exc:
        raise CompressError(f"model '{repo_id}' has no revision '{revision}'") from exc
    except OSError as exc:
        raise CompressError(f"could not download '{repo_id}' from the hub: {exc}") from exc


def _check_hub_config(repo_id: str, config_file: Path) -> None:
    """The architecture check on a hub model's config.json alone (models with their own code are
    judged after download, where --trust-remote-code is known)."""
    from transformers import AutoConfig

    if not config_file.is_file():
        raise CompressError(f"hub model '{repo_id}' has no config.json, so it is not a transformers model")
    if needs_remote_code(config_file):
        return
    try:
        config = AutoConfig.from_pretrained(config_file.parent)
    except (ValueError, OSError, KeyError) as exc:
        raise CompressError(f"cannot read the config of '{repo_id}': {_first_line(exc)}") from exc
    inspect_architecture(config)


def resolve_model(reference: str | Path, revision: str | None = None) -> ModelSource:
    """Turn a path or hub id into a local directory with a fingerprint, or a one-line error.

    A `.gguf` file (or a directory holding one and no config.json) becomes the cached directory
    transformers dequantizes it into (`gguf_source.py`); the lineage records the file.
    """
    text = str(reference)
    gguf = None
    if _looks_like_local_path(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise CompressError(f"model path '{text}' does not exist")
        if gguf_file := gguf_file_in(path):
            path, gguf = convert_gguf(gguf_file)
        elif not path.is_dir():
            raise CompressError(f"model path '{text}' is a file; pass the model's directory or a .gguf file")
        hub_revision = None
    else:
        path = _download_from_hub(text, revision)
        hub_revision = path.name  # snapshot directories are named by commit hash
    if not (path / "config.json").is_file():
        raise CompressError(f"'{text}' has no config.json, so it is not a transformers model directory")
    return ModelSource(
        reference=text,
        path=path,
        revision=hub_revision,
        sha256=fingerprint_files(path),
        is_artifact=(path / MANIFEST_NAME).is_file(),
        gguf=gguf,
    )


def load_config(source: ModelSource, trust_remote_code: bool = False):
    """Load and check `config.json`: a causal LM whose decoder blocks are found (`architecture.py`)."""
    from transformers import AutoConfig

    try:
        json.loads((source.path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{source.path / 'config.json'} is not valid JSON: {exc}") from exc
    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise CompressError(f"cannot read the config of '{source.reference}': {_first_line(exc)}") from exc
    architecture_of(source.path, trust_remote_code)
    return config


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def stored_dtype(model_config) -> torch.dtype:
    """The dtype a checkpoint's config declares (float32 when it declares none): what a dense
    artifact made from it is saved in."""
    dtype = getattr(model_config, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def reject_quantized(source: ModelSource, trust_remote_code: bool = False) -> None:
    """Techniques start from the original weights: re-compressing an already quantized model would
    compound the errors and mostly cannot be read back into float weights anyway."""
    config = load_config(source, trust_remote_code)
    existing = getattr(config, "quantization_config", None)
    if existing:
        kind = (
            existing.get("quant_method", "unknown") if isinstance(existing, dict) else type(existing).__name__
        )
        raise CompressError(
            f"'{source.reference}' is already quantized ({kind}); start from the original model instead"
        )


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; anything else must be a device torch knows."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise CompressError(f"unknown device '{device}'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CompressError(f"device '{device}' was asked for but CUDA is not available")
    return resolved


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs).

    Elsewhere bfloat16 is emulated and slower than float32, so callers that pick it for speed
    fall back to float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    if device.type != "cpu" or not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a dtype name to torch; `auto` keeps the checkpoint's own dtype."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise CompressError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[dtype]


def load_model(
    source: ModelSource,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    require_finite: bool = False,
) -> nn.Module:
    """Load a causal LM from safetensors only, in eval mode, on the resolved device.

    `require_finite`: refuse NaN/Inf weights (commands that write a model from this one)."""
    from transformers import AutoModelForCausalLM

    config = load_config(source, trust_remote_code)
    target = resolve_device(device)
    for file in sorted(source.path.glob("*.safetensors")):
        with open_safetensors(file):  # a truncated file is the user's to fix, named, before loading
            pass
    try:
        model, report = AutoModelForCausalLM.from_pretrained(
            source.path,
            config=config,
            dtype=resolve_dtype(dtype),
            device_map=str(target),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"cannot load the model in '{source.reference}': {first_line}") from exc
    check_loading_report(source, report)
    if require_finite:
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CompressError(
                    f"weight '{name}' of '{source.reference}' has NaN or Inf values; the model is broken"
                )
    return model.eval()


def check_loading_report(source: ModelSource, report: dict) -> None:
    """A checkpoint must hold exactly the model's tensors: transformers initialises a missing one
    randomly and drops an unexpected one, and either way the result is not the model on disk."""
    for kind, meaning in (
        ("missing_keys", "lacks"),
        ("unexpected_keys", "has a tensor the model does not use,"),
    ):
        names = sorted(report.get(kind) or ())
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise CompressError(
                f"the checkpoint in '{source.reference}' {meaning} '{names[0]}'{more}: it does not match "
                "its config.json; re-export the model"
            )


#: The JSON files a tokenizer is read from, each a JSON object: a broken one is named in the error.
TOKENIZER_JSON_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
#: Files that hold a vocabulary (fast, SentencePiece, tiktoken, BPE or WordPiece): without any of
#: them a directory has no tokenizer to load.
TOKENIZER_VOCABULARY_GLOBS = ("tokenizer.json", "*.model", "*.tiktoken", "vocab.*", "merges.txt")


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """The model's tokenizer; every technique that reads text needs it.

    Loading reads nothing but the tokenizer files in `source.path`, so any failure is about them,
    whatever its type (`tokenizers` raises a bare `Exception` for a tokenizer.json that parses but
    describes no tokenizer, transformers an `AttributeError` for a config that is not an object):
    one line naming the directory and, where it can be found, the file and its problem.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:
        raise CompressError(_tokenizer_problem(source, exc)) from exc


def _known_tokenizer_class(name: str) -> bool:
    """Whether transformers has a tokenizer class of this name (a model's own code may add more)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        return tokenizer_class_from_name(name) is not None
    except Exception:  # a private helper: when it fails, the library's own message is shown instead
        return True


def _tokenizer_problem(source: ModelSource, exc: Exception) -> str:
    """Why the tokenizer in `source` did not load: the file to blame when one is malformed, no
    tokenizer files at all, or the library's own first line."""
    directory = source.path
    advice = "re-download or re-export the model's tokenizer files"
    for name in TOKENIZER_JSON_FILES:
        file = directory / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            return f"cannot load the tokenizer of '{source.reference}': '{file}' is not UTF-8 text; {advice}"
        except json.JSONDecodeError as error:
            return (
                f"cannot load the tokenizer of '{source.reference}': '{file}' is not valid JSON "
                f"({error.msg}: line {error.lineno} column {error.colno}); {advice}"
            )
        if not isinstance(data, dict):
            return (
                f"cannot load the tokenizer of '{source.reference}': '{file}' holds a JSON "
                f"{type(data).__name__}, not an object; {advice}"
            )
        custom = "auto_map" in data  # a class of the model's own code, which transformers cannot name
        named = data.get("tokenizer_class") if name == "tokenizer_config.json" and not custom else None
        if named is not None and not (isinstance(named, str) and _known_tokenizer_class(named)):
            return (
                f"cannot load the tokenizer of '{source.reference}': '{file}' names tokenizer_class "
                f"{named!r}, which transformers does not know; {advice}"
            )
    vocabulary = [p for pattern in TOKENIZER_VOCABULARY_GLOBS for p in directory.glob(pattern) if p.is_file()]
    if not vocabulary:
        return (
            f"'{source.reference}' has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, …); "
            "copy the model's tokenizer into it"
        )
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
    fast = directory / "tokenizer.json"
    blamed = f"'{fast}' does" if fast.is_file() else "its tokenizer files do"
    return (
        f"cannot load the tokenizer of '{source.reference}': {blamed} not describe a usable tokenizer "
        f"({type(exc).__name__}: {detail}); {advice}"
    )


def tokenizers_match(reference_tokenizer, tokenizer, probe: str) -> bool:
    """Same vocabulary and the same ids for a sample text: logits of the two models are comparable
    position by position (what KLD and distillation need).

    A token only one side has still leaves the vocabularies the same when it is a special token at
    an id the other side leaves empty: the placeholders (`[PAD300]`, …) a GGUF holds for embedding
    rows past its tokenizer (convert_hf_to_gguf and `export gguf` both write them, as llama.cpp
    needs one token per row), which no text the other side tokenizes becomes.
    """
    ours, theirs = reference_tokenizer.get_vocab(), tokenizer.get_vocab()
    if ours != theirs and not (
        all(ours[text] == theirs[text] for text in ours.keys() & theirs.keys())
        and _only_padding(ours, theirs, tokenizer)
        and _only_padding(theirs, ours, reference_tokenizer)
    ):
        return False
    encode = {"add_special_tokens": False}
    return reference_tokenizer(probe, **encode)["input_ids"] == tokenizer(probe, **encode)["input_ids"]


def _only_padding(vocab: dict[str, int], other: dict[str, int], other_tokenizer) -> bool:
    """Whether every token `other` has beyond `vocab` is a special one at an id `vocab` leaves empty."""
    decoder = getattr(other_tokenizer, "added_tokens_decoder", None) or {}
    special = {token.content for token in decoder.values() if getattr(token, "special", False)}
    special |= set(getattr(other_tokenizer, "all_special_tokens", ()))
    used = set(vocab.values())
    return all(text in special and other[text] not in used for text in other.keys() - vocab.keys())


# --- walking the module tree -------------------------------------------------------------------


@dataclass(frozen=True)
class LinearLayer:
    """A weight matrix inside a decoder block.

    GPT-2's `Conv1D` stores its weight as [in, out]; `transposed` records that so quantizers can
    treat every layer as an [out, in] matrix.
    """

    name: str
    module: nn.Module
    in_features: int
    out_features: int
    transposed: bool


@dataclass(frozen=True)
class DecoderLayout:
    """The parts of a causal LM that the techniques touch, found in the module tree."""

    blocks_path: str
    blocks: nn.ModuleList
    embeddings: nn.Module
    final_norm: nn.Module | None
    lm_head: nn.Module | None

    def linear_layers(self, index: int) -> list[LinearLayer]:
        return find_linear_layers(self.blocks[index])


def _num_hidden_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "num_hidden_layers", None)


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The `ModuleList` of decoder blocks: one entry per hidden layer, all of one class.

    When several lists qualify (a vision tower beside the text stack, say) the one holding the most
    parameters wins, which is the language model's stack.
    """
    expected = _num_hidden_layers(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and (expected is None or len(module) == expected)
        and len({type(block) for block in module}) == 1
        and find_linear_layers(module[0])
    ]
    if not candidates:
        raise UnsupportedArchitectureError(
            f"cannot find the decoder blocks of {type(model).__name__}: no list of {expected} "
            "identical blocks with linear layers"
        )
    return max(candidates, key=lambda item: _parameter_count(item[1]))


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' GPT-2 style Conv1D: a linear layer whose weight is stored [in, out].
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def find_linear_layers(block: nn.Module) -> list[LinearLayer]:
    """Every `Linear` and `Conv1D` in a block, in registration order, with its matrix shape."""
    layers = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            layers.append(LinearLayer(name, module, module.in_features, module.out_features, False))
        elif _is_conv1d(module):
            in_features, out_features = module.weight.shape
            layers.append(LinearLayer(name, module, in_features, out_features, True))
    return layers


def _final_norm(parent: nn.Module, blocks: nn.ModuleList) -> nn.Module | None:
    """The norm applied after the blocks: a norm child of the blocks' parent (`norm`, `ln_f`, …).

    Most models register it after the blocks; OPT registers `final_layer_norm` before them, so a
    norm registered earlier counts too unless its name says it belongs to the embeddings.
    """
    before, after = [], []
    seen_blocks = False
    for name, child in parent.named_children():
        if child is blocks:
            seen_blocks = True
        elif "norm" in type(child).__name__.lower():
            (after if seen_blocks else before).append((name, child))
    candidates = after or [(name, child) for name, child in before if "emb" not in name]
    return candidates[0][1] if candidates else None


def discover_layout(model: nn.Module) -> DecoderLayout:
    """Find blocks, embeddings, final norm and head of a causal LM from its module tree."""
    blocks_path, blocks = find_decoder_blocks(model)
    parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    parent = model.get_submodule(parent_path)
    return DecoderLayout(
        blocks_path=blocks_path,
        blocks=blocks,
        embeddings=model.get_input_embeddings(),
        final_norm=_final_norm(parent, blocks),
        lm_head=model.get_output_embeddings(),
    )


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each, so tied embeddings are not counted twice."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
