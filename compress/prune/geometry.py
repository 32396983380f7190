"""What structured pruning needs to know about a model: its sizes and where its matrices live.

Pruning slices matrices along axes whose meaning depends on the architecture (the rows of Phi-3's
`qkv_proj` are three segments, GPT-2's `Conv1D` stores its weight [in, out]), so each supported model
type is described once here, by the names its `transformers` modeling code uses. Sizes are read from
the config because that is what the modeling code builds a model from: a pruned model is only
"standard" if its config, reloaded, builds exactly the pruned shapes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from compress.errors import CompressError, UnsupportedArchitectureError
from compress.modeling import count_parameters


@dataclass(frozen=True)
class Architecture:
    """Where a decoder block's matrices are and how their axes split, for one model type.

    `attention_inputs` and `mlp_inputs` map a matrix (its path inside a block) to the segments of
    its output axis, in order: `("q", "k", "v")` for a fused projection, `("gate", "up")` for Phi-3's
    `gate_up_proj`. The two outputs are the matrices that write the residual stream.
    """

    attention: str
    attention_inputs: dict[str, tuple[str, ...]]
    attention_output: str
    mlp_inputs: dict[str, tuple[str, ...]]
    mlp_output: str
    norms: tuple[str, ...]
    intermediate_field: str = "intermediate_size"
    #: Paths from the model root to modules outside the blocks that touch the residual stream.
    position_embeddings: str | None = None
    project_in: str | None = None
    project_out: str | None = None
    #: Weights stored [in, out] (transformers' `Conv1D`).
    conv1d: bool = False
    #: The attention computes head_dim = hidden_size // num_heads and has no config field for it.
    head_dim_from_hidden: bool = False
    #: RMSNorm gain is (offset + weight): Gemma stores w and multiplies by (1 + w).
    norm_offset: float = 0.0
    #: Embeddings are multiplied by sqrt(hidden_size), recomputed from the config (Gemma).
    embedding_scaled: bool = False


_LLAMA = Architecture(
    attention="self_attn",
    attention_inputs={"self_attn.q_proj": ("q",), "self_attn.k_proj": ("k",), "self_attn.v_proj": ("v",)},
    attention_output="self_attn.o_proj",
    mlp_inputs={"mlp.gate_proj": ("gate",), "mlp.up_proj": ("up",)},
    mlp_output="mlp.down_proj",
    norms=("input_layernorm", "post_attention_layernorm"),
)

_GEMMA2 = replace(
    _LLAMA,
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    norm_offset=1.0,
    embedding_scaled=True,
)

#: Qwen3's q_norm/k_norm normalise over head_dim, which no pruning here changes, so they are not listed.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": replace(_LLAMA, norm_offset=1.0, embedding_scaled=True),
    # Gemma 2 and 3 add a norm after attention and one before and after the MLP, all residual-wide;
    # Gemma 3's q/k norms span head_dim, which no pruning here changes.
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "granite": _LLAMA,  # its multipliers scale whole tensors, whatever their width
    "phi3": replace(
        _LLAMA,
        attention_inputs={"self_attn.qkv_proj": ("q", "k", "v")},
        mlp_inputs={"mlp.gate_up_proj": ("gate", "up")},
    ),
    "gpt2": Architecture(
        attention="attn",
        attention_inputs={"attn.c_attn": ("q", "k", "v")},
        attention_output="attn.c_proj",
        mlp_inputs={"mlp.c_fc": ("up",)},
        mlp_output="mlp.c_proj",
        norms=("ln_1", "ln_2"),
        intermediate_field="n_inner",
        position_embeddings="transformer.wpe",
        conv1d=True,
        head_dim_from_hidden=True,
    ),
    "opt": Architecture(
        attention="self_attn",
        attention_inputs={"self_attn.q_proj": ("q",), "self_attn.k_proj": ("k",), "self_attn.v_proj": ("v",)},
        attention_output="self_attn.out_proj",
        mlp_inputs={"fc1": ("up",)},
        mlp_output="fc2",
        norms=("self_attn_layer_norm", "final_layer_norm"),
        intermediate_field="ffn_dim",
        position_embeddings="model.decoder.embed_positions",
        project_in="model.decoder.project_in",
        project_out="model.decoder.project_out",
        head_dim_from_hidden=True,
    ),
}


def architecture(config) -> Architecture:
    """The description of `config`'s model type, or a one-line error for any other type."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"structured pruning does not support '{model_type}'; supported: {', '.join(ARCHITECTURES)}"
        )
    if getattr(config, "add_cross_attention", False):
        raise UnsupportedArchitectureError(
            f"structured pruning does not support {model_type} with cross-attention"
        )
    return ARCHITECTURES[model_type]


@dataclass(frozen=True)
class Geometry:
    """The sizes structured pruning changes. GPT-2 and OPT have one KV head per query head."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads


def config_geometry(config) -> Geometry:
    """Sizes as the modeling code derives them from `config` (GPT-2's `n_inner=None` is 4 × n_embd)."""
    arch = architecture(config)
    hidden, heads = config.hidden_size, config.num_attention_heads
    if arch.head_dim_from_hidden:
        kv_heads, head_dim = heads, hidden // heads
    else:
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
    return Geometry(
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=getattr(config, arch.intermediate_field) or 4 * hidden,
    )


def geometry(model: nn.Module) -> Geometry:
    """The sizes of a loaded model, from its config."""
    return config_geometry(model.config)


def heads_unsupported(model_type: str) -> str:
    return (
        f"head pruning is not supported on {model_type}: its attention ties head size to hidden size "
        "(head_dim = hidden_size // num_heads); prune --mlp, --hidden or --layers instead"
    )


def _check_range(what: str, new: int | None, old: int) -> None:
    if new is not None and not 1 <= new <= old:
        raise CompressError(f"{what} must be between 1 and {old}, got {new}")


def _check_heads(g: Geometry, arch: Architecture, num_heads: int | None, num_kv_heads: int | None) -> None:
    """Pruning keeps whole KV groups or the same number of query heads in every group; nothing else."""
    if num_heads is None and num_kv_heads is None:
        return
    if arch.head_dim_from_hidden:
        raise CompressError(heads_unsupported(g.model_type))
    heads = g.num_heads if num_heads is None else num_heads
    kv_heads = g.num_kv_heads if num_kv_heads is None else num_kv_heads
    _check_range("the number of query heads", heads, g.num_heads)
    _check_range("the number of KV heads", kv_heads, g.num_kv_heads)
    whole_groups = heads == kv_heads * g.group_size
    even_spread = kv_heads == g.num_kv_heads and heads % kv_heads == 0
    if not (whole_groups or even_spread):
        raise CompressError(
            f"{heads} query heads over {kv_heads} KV heads cannot come from pruning {g.num_heads} heads "
            f"in {g.num_kv_heads} KV groups: keep whole groups of {g.group_size} "
            "or the same number in every group"
        )


def _check_hidden(g: Geometry, arch: Architecture, hidden_size: int | None) -> None:
    _check_range("the hidden size", hidden_size, g.hidden_size)
    if hidden_size is not None and arch.head_dim_from_hidden and hidden_size % g.num_heads:
        raise CompressError(
            f"hidden size {hidden_size} is not a multiple of the {g.num_heads} heads: {g.model_type} ties "
            "head size to hidden size (head_dim = hidden_size // num_heads); "
            f"keep a multiple of {g.num_heads} channels"
        )


def resize_config(
    config,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
    kept_layers: list[int] | None = None,
) -> None:
    """Set new sizes on `config` in place; unchecked (see `pruned_config`).

    The current `head_dim` and intermediate size are always written out: when absent, the modeling
    code derives them (hidden_size // num_heads, GPT-2's 4 × n_embd), and after pruning one side of
    that ratio the derivation would build the wrong shapes.
    """
    g = config_geometry(config)
    arch = architecture(config)
    if not arch.head_dim_from_hidden:
        config.head_dim = g.head_dim
    setattr(config, arch.intermediate_field, intermediate_size or g.intermediate_size)
    if num_heads is not None:
        config.num_attention_heads = num_heads
    if num_kv_heads is not None:
        config.num_key_value_heads = num_kv_heads
    if hidden_size is not None:
        # OPT's embeddings have the residual width unless project_in/project_out map between them.
        if getattr(config, "word_embed_proj_dim", None) == g.hidden_size:
            config.word_embed_proj_dim = hidden_size
        config.hidden_size = hidden_size
    if kept_layers is not None:
        _keep_layers(config, kept_layers)


def _keep_layers(config, kept: list[int]) -> None:
    """Shorten the per-layer config entries so each kept block keeps its attention type."""
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[index] for index in kept]
    if getattr(config, "max_window_layers", None) is not None:
        # Qwen: blocks at index >= max_window_layers slide; the kept blocks below it stay below it.
        config.max_window_layers = sum(index < config.max_window_layers for index in kept)
    config.num_hidden_layers = len(kept)


def _validated(config):
    """Round-trip through the config class, so a config its own checks reject never reaches a model."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    try:
        type(config).from_dict(config.to_dict())
    except (ValueError, TypeError, KeyError, StrictDataclassClassValidationError) as exc:
        # Strict-dataclass errors name the validator first and the reason on the last line.
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CompressError(f"the pruned {config.model_type} config is not valid: {reason}") from exc
    return config


def pruned_config(
    config,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
):
    """A checked copy of `config` with smaller sizes; `config` itself is untouched.

    With `num_layers` the per-layer entries (`layer_types`) of the first blocks are kept: which blocks
    go changes no size, and `remove_blocks` records the real ones.
    """
    g = config_geometry(config)
    arch = architecture(config)
    _check_heads(g, arch, num_heads, num_kv_heads)
    _check_range("the intermediate size", intermediate_size, g.intermediate_size)
    _check_hidden(g, arch, hidden_size)
    _check_range("the number of layers", num_layers, g.num_layers)
    new = copy.deepcopy(config)
    resize_config(
        new,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        hidden_size=hidden_size,
        kept_layers=None if num_layers is None else list(range(num_layers)),
    )
    return _validated(new)


def predict_parameter_count(config) -> int:
    """Parameters of the model `config` builds, tied weights once, without allocating any weight."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)
