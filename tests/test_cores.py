"""Cores of AWQ and pruning on a tiny random Llama, against their definitions (fast: no training)."""

from __future__ import annotations

import pytest
import torch

from compress.calibrate import BlockInputs, capture_block_inputs, run_block, sequential_stages
from compress.modeling import discover_layout, find_linear_layers, load_model, resolve_model
from compress.prune.importance import taylor_scores
from compress.quantize.scale_groups import find_scale_groups


def _tiny_llama(tiny_model_dir):
    return load_model(resolve_model(tiny_model_dir("llama")), "float32", "cpu")


def _folds(model, ids):
    """Every fold AWQ finds in every block of `model`, applied with a random positive scale."""
    layout = discover_layout(model)
    captured = capture_block_inputs(model, layout, ids, batch_size=2)
    generator = torch.Generator().manual_seed(1)
    found = []
    for index, block in enumerate(layout.blocks):
        inputs = BlockInputs(captured.first.hidden, captured.per_block[index])
        layers = {layer.name: layer for layer in find_linear_layers(block)}
        groups = find_scale_groups(block, inputs, sequential_stages(block, inputs))
        for group in groups:
            width = layers[group.consumers[0]].in_features
            group.fold(block, layers, torch.rand(width, generator=generator) * 4 + 0.25)
        found.append(groups)
        captured.first.hidden = run_block(block, inputs)
    return found


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "falcon", "opt", "gpt2"])
def test_awq_scale_folds_leave_the_model_function_unchanged(family, tiny_model_dir):
    """Before any rounding, dividing a producer's output by s and multiplying its consumers' input
    columns by s is the identity: every fold AWQ finds, in every block, keeps the logits (Gemma's
    `(1 + w)` norms, Falcon's parallel block, OPT's ReLU, GPT-2's transposed Conv1D)."""
    model = load_model(resolve_model(tiny_model_dir(family)), "float32", "cpu")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    found = _folds(model, ids)
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert all(groups for groups in found)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_awq_finds_the_llama_folds_and_refuses_the_inexact_ones(tiny_model_dir):
    """On a Llama with one KV head per query head: the attention norm feeds q/k/v, v feeds o, the
    MLP norm feeds gate/up, up feeds down; gate → down (through SiLU) and q → o are not exact."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    [groups] = _folds(model, torch.randint(0, 64, (2, 16)))
    assert [(group.producer, group.consumers, group.offset) for group in groups] == [
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), 0.0),
        ("self_attn.v_proj", ("self_attn.o_proj",), 0.0),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), 0.0),
        ("mlp.up_proj", ("mlp.down_proj",), 0.0),
    ]
    gemma = load_model(resolve_model(tiny_model_dir("gemma3_text")), "float32", "cpu")
    [first, _] = _folds(gemma, torch.randint(0, 64, (2, 16)))
    assert {group.producer: group.offset for group in first}["input_layernorm"] == 1.0


def test_taylor_importance_is_the_first_order_loss_change_of_each_unit(tiny_model_dir):
    """An MLP channel's Taylor score is |Σ w·∂L/∂w| over the weights it owns (its gate and up rows,
    its down column), with the gradient of the calibration loss summed over batches."""
    model = _tiny_llama(tiny_model_dir)
    calibration = torch.randint(
        0, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(2)
    )
    scores = taylor_scores(model, calibration, {"mlp"}).mlp

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model(input_ids=calibration, labels=calibration, use_cache=False).loss.backward()  # one batch of 3
    for index, block in enumerate(discover_layout(model).blocks):
        mlp = block.mlp
        owned = (
            (mlp.gate_proj.weight * mlp.gate_proj.weight.grad).sum(dim=1)
            + (mlp.up_proj.weight * mlp.up_proj.weight.grad).sum(dim=1)
            + (mlp.down_proj.weight * mlp.down_proj.weight.grad).sum(dim=0)
        )
        torch.testing.assert_close(scores[index], owned.abs().detach(), rtol=1e-4, atol=1e-7)
