"""Which models compress works on: decided by discovery, not by a list of names.

A model is accepted when transformers builds it as a causal language model and its decoder blocks
and their linear layers are found in the module tree (`modeling.discover_layout`). The check runs
on the *meta* device from the config alone: no weights are read, so a model nobody supports is
refused in a second, before a hub download, a GGUF dequantization or any other heavy work.

What discovery finds is recorded too: a mixture-of-experts model whose experts are stored as 3-D
tensors (transformers 5 packs every expert of a block into one `gate_up_proj`/`down_proj` pair)
has weights that are not linear layers. Casting and evaluation handle them like any tensor; the
packed methods unfuse them into one linear pair per expert (`experts.py`) where transformers'
experts decorator describes their layout; other techniques, and experts no decorator describes,
are refused by name (`require_linear_weights`) rather than leave most of the model's bytes
untouched under a 4-bit label.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from compress.errors import UnsupportedArchitectureError
from compress.experts import is_fused_experts


@dataclass(frozen=True)
class ArchitectureFacts:
    """What discovery found in a model's module tree, from its config alone."""

    model_type: str
    blocks_path: str
    linear_names: tuple[str, ...]  # linear layers of the first block
    packed_experts: tuple[str, ...]  # parameters of the first block held as [experts, out, in] tensors
    unfusable: bool = False  # every such parameter belongs to a transformers experts module

    @property
    def is_moe(self) -> bool:
        return bool(self.packed_experts)


def _is_causal_lm(config, trust_remote_code: bool) -> bool:
    """transformers builds it as a causal LM and it is a decoder: BERT-like encoders (which have a
    masked-LM head too, and say `is_decoder: false` unless made decoders) and encoder-decoders have
    causal-LM heads in the auto mapping, but they are not what users deploy for generation."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )
    if encoder or getattr(config, "is_encoder_decoder", False):
        return False
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return True
    auto_map = getattr(config, "auto_map", None) or {}
    return trust_remote_code and "AutoModelForCausalLM" in auto_map


def _packed_experts(block: torch.nn.Module, linear_names: set[str]) -> tuple[str, ...]:
    """Parameters of `block` with three or more axes that no linear layer owns: stacked experts."""
    return tuple(
        name
        for name, parameter in block.named_parameters()
        if parameter.ndim >= 3 and name.rpartition(".")[0] not in linear_names
    )


def inspect_architecture(config, trust_remote_code: bool = False) -> ArchitectureFacts:
    """Build `config`'s model on the meta device and find its blocks; a one-line error when
    transformers has no causal LM for it or no decoder blocks with linear layers are found."""
    from transformers import AutoModelForCausalLM

    from compress.modeling import discover_layout

    model_type = getattr(config, "model_type", None) or "unknown"
    if not _is_causal_lm(config, trust_remote_code):
        remote = " (its own code needs --trust-remote-code)" if getattr(config, "auto_map", None) else ""
        raise UnsupportedArchitectureError(
            f"unsupported architecture '{model_type}': not a decoder-only causal language model "
            f"transformers knows{remote}"
        )
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, AssertionError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedArchitectureError(
            f"unsupported architecture '{model_type}': transformers cannot build it from its config "
            f"({detail})"
        ) from exc
    layout = discover_layout(model)  # raises UnsupportedArchitectureError with what it missed
    linears = tuple(layer.name for layer in layout.linear_layers(0))
    experts = _packed_experts(layout.blocks[0], set(linears))
    owners = {layout.blocks[0].get_submodule(name.rpartition(".")[0]) for name in experts}
    return ArchitectureFacts(
        model_type=model_type,
        blocks_path=layout.blocks_path,
        linear_names=linears,
        packed_experts=experts,
        unfusable=bool(owners) and all(is_fused_experts(owner) for owner in owners),
    )


@cache
def _facts_of_file(config_file: str, stamp: tuple[int, int], trust_remote_code: bool) -> ArchitectureFacts:
    from transformers import AutoConfig

    del stamp  # part of the cache key only: an edited config.json is inspected again
    config = AutoConfig.from_pretrained(Path(config_file).parent, trust_remote_code=trust_remote_code)
    return inspect_architecture(config, trust_remote_code)


def architecture_of(directory: Path, trust_remote_code: bool = False) -> ArchitectureFacts:
    """`inspect_architecture` for a model directory, once per version of its config.json (every
    command reads the config several times; the meta model is built once)."""
    config_file = (directory / "config.json").resolve()
    status = config_file.stat()
    return _facts_of_file(str(config_file), (status.st_mtime_ns, status.st_size), trust_remote_code)


def needs_remote_code(config_file: Path) -> bool:
    """Whether a config.json names its own modelling code (`auto_map`): judged after loading, with
    --trust-remote-code, not from the file alone."""
    try:
        return "auto_map" in json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False


def require_linear_weights(facts: ArchitectureFacts, what: str, instead: str) -> None:
    """Refuse a technique that rewrites linear layers on a model whose experts are not linear
    layers; `instead` says what the user can do."""
    if facts.is_moe:
        where = facts.packed_experts[0].rpartition(".")[0] or facts.packed_experts[0]
        raise UnsupportedArchitectureError(
            f"{what} does not support the mixture-of-experts model '{facts.model_type}' yet: its experts "
            f"('{where}' in every block) are stacked 3-D tensors, not linear layers; {instead}"
        )
