"""Cores of AWQ and pruning on a tiny random Llama, against their definitions (fast: no training)."""

from __future__ import annotations

import torch

from compress.modeling import discover_layout, find_linear_layers, load_model, resolve_model
from compress.prune.importance import taylor_scores
from compress.quantize.awq import SCALE_GROUPS, _fold_scale


def _tiny_llama(tiny_model_dir):
    return load_model(resolve_model(tiny_model_dir("llama")), "float32", "cpu")


def test_awq_scale_fold_leaves_the_model_function_unchanged(tiny_model_dir):
    """Before any rounding, dividing a producer's output by s and multiplying its consumers' input
    columns by s is the identity: every fold AWQ makes, in every block, keeps the logits."""
    model = _tiny_llama(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    generator = torch.Generator().manual_seed(1)
    folded = 0
    for block in discover_layout(model).blocks:
        layers = {layer.name: layer for layer in find_linear_layers(block)}
        for producer, names in SCALE_GROUPS["llama"]:
            consumers = [layers[name] for name in names]
            module = block.get_submodule(producer)
            width = consumers[0].in_features
            if isinstance(module, torch.nn.Linear) and module.out_features != width:
                continue  # grouped-query v_proj → o_proj, which AWQ skips as well
            _fold_scale(block, producer, consumers, torch.rand(width, generator=generator) * 4 + 0.25)
            folded += 1
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert folded >= 2 * len(discover_layout(model).blocks)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


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
