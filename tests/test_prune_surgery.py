"""Structured-pruning surgery on every supported architecture.

The exactness tests first make some heads, neurons, channels or blocks *dead* (nothing they compute
reaches the residual stream), then prune exactly those: the logits must not change. That checks
every slice, the config, the norm compensation and the rebuilt blocks without trained weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_VOCAB
from torch import nn

from compress.errors import CompressError, UnsupportedArchitectureError
from compress.modeling import count_parameters, discover_layout
from compress.prune.geometry import ARCHITECTURES as SPECS
from compress.prune.geometry import config_geometry, geometry, predict_parameter_count, pruned_config
from compress.prune.surgery import (
    prune_attention_heads,
    prune_hidden_channels,
    prune_mlp_channels,
    remove_blocks,
)

ARCHITECTURES = tuple(SPECS)  # every model type pruning describes, each a tiny model of its family
TIED_HEAD_SIZE = ("gpt2", "opt")  # attention head size is hidden // heads: no head pruning


def _extra_configs() -> dict[str, object]:
    """Variants the tiny fixtures do not cover, each exercising one more branch of the surgery."""
    from transformers import GemmaConfig, GPT2Config, OPTConfig, Qwen2Config

    common = dict(vocab_size=TINY_VOCAB, num_hidden_layers=2, max_position_embeddings=128)
    llama_like = dict(
        common, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2
    )
    opt = dict(common, hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=16)
    return {
        "gemma-untied": GemmaConfig(**llama_like, head_dim=8, tie_word_embeddings=False),
        "opt-projections": OPTConfig(**opt),
        "opt-post-ln": OPTConfig(**opt, do_layer_norm_before=False),
        "gpt2-layer-scaled": GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            scale_attn_by_inverse_layer_idx=True,
        ),
        "qwen2-sliding": Qwen2Config(
            **llama_like, use_sliding_window=True, sliding_window=4, max_window_layers=1
        ),
    }


EXTRAS = tuple(_extra_configs())
IDS = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def load(tiny_model_dir):
    """`load(name)`: a fresh tiny model, from the shared fixtures or one of the extra configs."""
    from transformers import AutoModelForCausalLM

    def make(name: str) -> nn.Module:
        if name in ARCHITECTURES:
            return AutoModelForCausalLM.from_pretrained(tiny_model_dir(name)).eval()
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(_extra_configs()[name]).eval()

    return make


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 rounding and norm epsilons apart; a wrong slice is off by O(1)."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def _spec(model: nn.Module):
    return SPECS[model.config.model_type]


def _block_module(model: nn.Module, layer: int, path: str) -> nn.Module:
    return discover_layout(model).blocks[layer].get_submodule(path)


def _out_axis(model: nn.Module) -> int:
    return 1 if _spec(model).conv1d else 0


def _zero(tensor: torch.Tensor, axis: int, index) -> None:
    tensor.index_fill_(axis, torch.as_tensor(index, dtype=torch.long), 0.0)


def _everything(count: int, num_layers: int) -> dict[int, list[int]]:
    return {layer: list(range(count)) for layer in range(num_layers)}


# --- keeping everything ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES + EXTRAS)
def test_keeping_everything_changes_nothing(name, load):
    model = load(name)
    before, g = _logits(model), geometry(model)
    if model.config.model_type not in TIED_HEAD_SIZE:
        prune_attention_heads(model, _everything(g.num_heads, g.num_layers))
    prune_mlp_channels(model, _everything(g.intermediate_size, g.num_layers))
    prune_hidden_channels(model, list(range(g.hidden_size)))
    remove_blocks(model, [])
    assert geometry(model) == g
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=1e-6)


# --- dead parts pruned exactly --------------------------------------------------------------------

HEAD_KEEP = {
    "whole-groups": ({0: [2, 3], 1: [0, 1]}, 1),  # one of two KV groups, a different one per layer
    "per-group": ({0: [0, 2], 1: [1, 3]}, 2),  # one query head in each group
}


@pytest.mark.parametrize("variant", HEAD_KEEP)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_dead_heads_is_exact(name, variant, load):
    model = load(name)
    keep, kv_heads = HEAD_KEEP[variant]
    if name in TIED_HEAD_SIZE:
        with pytest.raises(CompressError, match=f"head pruning is not supported on {name}: .* --hidden"):
            prune_attention_heads(model, keep)
        return
    g = geometry(model)
    with torch.no_grad():
        for layer, kept in keep.items():
            output = _block_module(model, layer, _spec(model).attention_output)
            dropped = [
                h * g.head_dim + d for h in range(g.num_heads) if h not in kept for d in range(g.head_dim)
            ]
            _zero(output.weight, 1 - _out_axis(model), dropped)
    before = _logits(model)
    prune_attention_heads(model, keep)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, kv_heads)
    assert model.config.head_dim == g.head_dim
    _assert_same(_logits(model), before)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_dead_mlp_channels_is_exact(name, load):
    model = load(name)
    g = geometry(model)
    size = g.intermediate_size
    keep = {0: list(range(0, size, 2)), 1: list(range(size // 2))}
    with torch.no_grad():
        for layer, kept in keep.items():
            output = _block_module(model, layer, _spec(model).mlp_output)
            _zero(output.weight, 1 - _out_axis(model), sorted(set(range(size)) - set(kept)))
    before = _logits(model)
    prune_mlp_channels(model, keep)
    assert geometry(model).intermediate_size == size // 2
    _assert_same(_logits(model), before)


def _kill_channels(
    tensor: torch.Tensor, axis: int, dropped: list[int], kept: list[int], center: bool
) -> None:
    """Zero the dropped channels; with `center`, also make the kept ones sum to zero (LayerNorm)."""
    _zero(tensor, axis, dropped)
    if center:
        index = torch.tensor(kept)
        values = tensor.index_select(axis, index)
        tensor.index_copy_(axis, index, values - values.mean(dim=axis, keepdim=True))


def _residual_writers(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """Every module that adds to the residual stream, with the weight axis of its hidden channels."""
    spec, layout = _spec(model), discover_layout(model)
    project_in = (
        getattr(model.get_submodule("model.decoder"), "project_in", None) if spec.project_in else None
    )
    writers = [(project_in, 0) if project_in is not None else (layout.embeddings, 1)]
    if spec.position_embeddings:
        writers.append((model.get_submodule(spec.position_embeddings), 1))
    for block in layout.blocks:
        writers += [
            (block.get_submodule(path), _out_axis(model)) for path in (spec.attention_output, spec.mlp_output)
        ]
    return writers


def _kill_hidden_channels(model: nn.Module, dropped: list[int], kept: list[int]) -> None:
    """Make the dropped residual channels zero everywhere, so removing them must change nothing.

    The token embeddings are scaled up first so that norm epsilons are negligible (post-norms,
    which normalise a block's small outputs rather than the residual, get no epsilon at all).
    LayerNorm centres over every channel, so for it every write to the residual stream is also made
    zero-mean, the norms output zero on dropped channels, and (GPT-2, OPT: heads shrink with the
    hidden size) two query and two value dimensions of every head are made dead too.
    """
    writers = _residual_writers(model)
    writers[0][0].weight.mul_(30.0)
    if len(_spec(model).norms) > 2:  # post-norms (Gemma 2/3) see the writers' small outputs: no eps
        model.config.rms_norm_eps = 1e-12  # rebuilt blocks read it
        for module in model.modules():
            if isinstance(getattr(module, "eps", None), float):
                module.eps = 1e-12
    layer_norm = any(isinstance(module, nn.LayerNorm) for module in model.modules())
    for module, axis in writers:
        _kill_channels(module.weight, axis, dropped, kept, layer_norm)
        if getattr(module, "bias", None) is not None:
            _kill_channels(module.bias, 0, dropped, kept, layer_norm)
    if layer_norm:
        for norm in [module for module in model.modules() if isinstance(module, nn.LayerNorm)]:
            _zero(norm.weight, 0, dropped)
            _zero(norm.bias, 0, dropped)
        _kill_head_dims(model)


def _kill_head_dims(model: nn.Module) -> None:
    g, spec = geometry(model), _spec(model)
    for block in discover_layout(model).blocks:
        query = block.get_submodule(next(iter(spec.attention_inputs)))  # q_proj, or c_attn (q first)
        output = block.get_submodule(spec.attention_output)
        for head in range(g.num_heads):
            start = head * g.head_dim
            _zero(query.weight, _out_axis(model), [start + 1, start + 5])
            _zero(query.bias, 0, [start + 1, start + 5])
            _zero(output.weight, 1 - _out_axis(model), [start, start + 7])


@pytest.mark.parametrize("name", (*ARCHITECTURES, "gemma-untied", "opt-projections"))
def test_pruning_dead_hidden_channels_is_exact(name, load):
    model = load(name)
    g = geometry(model)
    kept = [c for c in range(g.hidden_size) if c % 4 != 1]  # 24 of 32: a multiple of the 4 heads
    dropped = sorted(set(range(g.hidden_size)) - set(kept))
    with torch.no_grad():
        _kill_hidden_channels(model, dropped, kept)
    before = _logits(model)
    prune_hidden_channels(model, kept)
    assert geometry(model).hidden_size == 24
    _assert_same(_logits(model), before)


def _kill_block(model: nn.Module, layer: int) -> None:
    spec = _spec(model)
    for path in (spec.attention_output, spec.mlp_output):
        module = _block_module(model, layer, path)
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()


@pytest.mark.parametrize("name", (*ARCHITECTURES, "gpt2-layer-scaled", "qwen2-sliding"))
def test_removing_a_dead_block_is_exact(name, load):
    model = load(name)
    old_types = getattr(model.config, "layer_types", None)
    with torch.no_grad():
        _kill_block(model, 0)
    before = _logits(model)
    remove_blocks(model, [0])
    assert model.config.num_hidden_layers == len(discover_layout(model).blocks) == 1
    attention = discover_layout(model).blocks[0].get_submodule(_spec(model).attention)
    assert attention.layer_idx == 0
    if old_types is not None:
        assert model.config.layer_types == old_types[1:]
    _assert_same(_logits(model), before)


# --- artifacts ------------------------------------------------------------------------------------


def _prune_everything(model: nn.Module) -> dict[str, int]:
    """Heads (where supported), MLP, hidden and a block on random weights; returns the sizes used."""
    g = geometry(model)
    sizes = dict(intermediate_size=3 * g.intermediate_size // 4, hidden_size=24, num_layers=1)
    if model.config.model_type not in TIED_HEAD_SIZE:
        prune_attention_heads(model, {0: [2, 3], 1: [0, 1]})
        sizes.update(num_heads=2, num_kv_heads=1)
    middle = list(range(g.intermediate_size // 8, g.intermediate_size // 8 + sizes["intermediate_size"]))
    prune_mlp_channels(model, {0: middle, 1: list(range(sizes["intermediate_size"]))})
    prune_hidden_channels(model, [c for c in range(g.hidden_size) if c % 4 != 2])
    remove_blocks(model, [1])
    return sizes


@pytest.mark.parametrize("name", ARCHITECTURES + EXTRAS)
def test_pruned_model_saves_reloads_and_generates(name, load, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load(name)
    original = copy.deepcopy(model.config)
    sizes = _prune_everything(model)
    expected = pruned_config(original, **sizes)
    assert count_parameters(model) == predict_parameter_count(expected)
    assert geometry(model) == config_geometry(expected)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=1e-6)
    prompt = IDS[:1, :5]
    generated = reloaded.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 9)
    assert torch.equal(generated, model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0))


def test_pruned_config_leaves_the_original_alone(load):
    model = load("gpt2")
    before = model.config.to_dict()
    smaller = pruned_config(model.config, hidden_size=16, intermediate_size=32, num_layers=1)
    assert model.config.to_dict() == before
    assert (smaller.n_embd, smaller.n_inner, smaller.n_layer) == (16, 32, 1)
    assert predict_parameter_count(smaller) < count_parameters(model)


# --- errors ---------------------------------------------------------------------------------------


def test_removing_every_block_is_refused(load):
    with pytest.raises(CompressError, match="removing all 2 blocks"):
        remove_blocks(load("llama"), [1, 0])


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({0: [0, 1, 2], 1: [0, 1, 2]}, "3 query heads per layer cannot be spread evenly over 2 KV groups"),
        ({0: [0, 1], 1: [0, 2]}, r"same number of KV heads .* got \[1, 2\]"),
        ({0: [0, 1], 1: [0]}, r"same number of query heads .* got \[1, 2\]"),
        ({0: [0, 1]}, "every layer 0..1"),
        ({0: [0, 0], 1: [0, 1]}, "listed twice"),
        ({0: [0, 4], 1: [0, 1]}, "must be in 0..3"),
    ],
)
def test_bad_head_keeps_are_refused(keep, message, load):
    model = load("qwen3")
    weights = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(CompressError, match=message):
        prune_attention_heads(model, keep)
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


def test_uneven_query_heads_per_group_are_refused():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=8, num_key_value_heads=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(CompressError, match=r"layer 0 keeps \[3, 1\] query heads in its 2 KV groups"):
        prune_attention_heads(model, {0: [0, 1, 2, 4]})
    with pytest.raises(CompressError, match="3 query heads over 2 KV heads"):
        pruned_config(config, num_heads=3)


@pytest.mark.parametrize("name", TIED_HEAD_SIZE)
def test_hidden_size_must_divide_into_heads(name, load):
    with pytest.raises(CompressError, match=f"hidden size 30 is not a multiple of the 4 heads: {name}"):
        prune_hidden_channels(load(name), list(range(30)))
    with pytest.raises(CompressError, match="head pruning is not supported"):
        pruned_config(load(name).config, num_heads=2)


def test_other_bad_sizes_are_refused(load):
    model = load("llama")
    with pytest.raises(CompressError, match="keeps none of 32"):
        prune_hidden_channels(model, [])
    with pytest.raises(CompressError, match="same number of MLP channels"):
        prune_mlp_channels(model, {0: [0, 1], 1: [0]})
    with pytest.raises(CompressError, match="number of layers must be between 1 and 2"):
        pruned_config(model.config, num_layers=3)


def test_unsupported_architecture_is_refused():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
    )
    with pytest.raises(UnsupportedArchitectureError, match="structured pruning does not support 'gpt_neox'"):
        remove_blocks(AutoModelForCausalLM.from_config(config), [0])
