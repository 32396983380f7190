"""Mixture-of-experts blocks as one pair of linear layers per expert.

transformers 5 stores a block's experts as stacked 3-D tensors (`gate_up_proj` [E, 2I, H],
`down_proj` [E, H, I]) in a module whose forward its `use_experts_implementation` decorator
dispatches; the decorator also records the layout every implementation follows (`has_gate`,
`has_bias`, `is_transposed`, the module's `_apply_gate`). `UnfusedExperts` is that computation
with each expert's two matrices as ordinary linear layers named `<experts>.<e>.gate_up_proj` and
`<e>.down_proj`: the calibration engine then sees, through its usual hooks, exactly the tokens the
router sends to each expert, GPTQ and AWQ quantize each expert on them, the packed writer stores
them per expert (as gptqmodel's MoE checkpoints do), and the loader unfuses the same way before
filling them. The router is not a linear layer in these families and stays float.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.errors import UnsupportedArchitectureError

#: The `quantization_config` entry saying the experts are stored one linear pair per expert.
EXPERTS_KEY = "compress_experts"


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module: stacked 3-D weights behind `use_experts_implementation`."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed") and hasattr(module, "down_proj")


def _expert_linear(weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> nn.Linear:
    """One expert's matrix ([out, in], or [in, out] where the module stores it transposed)."""
    matrix = weight.T if transposed else weight
    layer = nn.Linear(
        matrix.shape[1], matrix.shape[0], bias=bias is not None, device=matrix.device, dtype=matrix.dtype
    )
    if matrix.device.type != "meta":
        with torch.no_grad():
            layer.weight.copy_(matrix)
            if bias is not None:
                layer.bias.copy_(bias)
    return layer


class UnfusedExperts(nn.Module):
    """The experts of one block, each a child module `<e>` holding `gate_up_proj` (or `up_proj`)
    and `down_proj` linears; forward(hidden_states, top_k_index, top_k_weights) as the fused one."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        if getattr(fused, "has_post_expert_norm", False):
            raise UnsupportedArchitectureError(
                f"{type(fused).__name__} normalizes each expert's output, which compress cannot unfuse yet"
            )
        self.num_experts = int(fused.num_experts)
        self.has_gate, self.has_bias = bool(fused.has_gate), bool(fused.has_bias)
        self.first = "gate_up_proj" if self.has_gate else "up_proj"
        self._apply_gate_of = type(fused)._apply_gate
        for name, value in vars(fused).items():  # the gate's constants (GPT-OSS: alpha, limit)
            if not name.startswith("_") and not isinstance(value, torch.Tensor) and not hasattr(self, name):
                setattr(self, name, value)
        for name, child in fused.named_children():  # the activation
            self.add_module(name, child)
        for expert in range(self.num_experts):
            pair = nn.Module()
            for name in (self.first, "down_proj"):
                weight = getattr(fused, name)[expert]
                bias = getattr(fused, f"{name}_bias")[expert] if self.has_bias else None
                pair.add_module(name, _expert_linear(weight, bias, bool(fused.is_transposed)))
            self.add_module(str(expert), pair)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        output = torch.zeros_like(hidden_states)
        for expert in torch.unique(top_k_index).tolist():
            if expert >= self.num_experts:  # expert-parallel sentinels
                continue
            tokens, slot = torch.where(top_k_index == expert)
            pair = getattr(self, str(expert))
            projected = getattr(pair, self.first)(hidden_states[tokens])
            projected = self._apply_gate_of(self, projected) if self.has_gate else self.act_fn(projected)
            routed = pair.down_proj(projected) * top_k_weights[tokens, slot, None]
            output.index_add_(0, tokens, routed.to(output.dtype))
        return output


def expert_layer_names(block: nn.Module) -> set[str]:
    """The names (inside `block`) of the linear layers that belong to unfused experts."""
    return {
        f"{name}.{expert}.{layer}"
        for name, module in block.named_modules()
        if isinstance(module, UnfusedExperts)
        for expert in range(module.num_experts)
        for layer in (module.first, "down_proj")
    }


def unfuse_experts(model: nn.Module) -> int:
    """Replace every fused experts module of `model` by its `UnfusedExperts`; returns how many."""
    names = [name for name, module in model.named_modules() if is_fused_experts(module)]
    for name in names:
        model.set_submodule(name, UnfusedExperts(model.get_submodule(name)))
    return len(names)
