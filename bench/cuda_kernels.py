"""On a CUDA device: the packed 4-bit and 8-bit layers against bf16 dense, on real model shapes.

The block linears of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down: 576↔576/192/1536) or
of a Llama-3-8B shape (`--shape 8b`, 4 layers, where decoding reads weights rather than launching
kernels), each in three forms: dense bf16 `nn.Linear`, and our `QuantLinear` (GPTQ layout) after
`prepare(torch.bfloat16)` picks its CUDA kernel (int4pack-cuda for 4-bit groups, int8pack for
per-channel 8-bit). Each form runs every layer on the same activations at batch sizes 1 to 256
(from 128 rows the packed layers take the dense path), timed with CUDA events, forms in turns,
best of the rounds. Weights are random round-to-nearest integers: speed depends on shapes and
kernels, not values. Nothing is asserted; it prints times, ratios and each layer's kernel.

    python bench/cuda_kernels.py [--shape smollm2|8b] [--group-size 128] [--rounds 5] [--iterations 50]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch import nn

from compress.quantize.qlinear import QuantLinear
from compress.quantize.rtn import rtn_quantize

#: (in, out) of one decoder layer's linears, and the layer count: SmolLM2-135M, and a Llama-3-8B
#: shape (where a decode step is bound by reading weights, not by launching kernels).
SHAPES = {
    "smollm2": ([(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)], 30),
    "8b": (
        [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)],
        4,
    ),
}
BATCHES = (1, 8, 16, 32, 64, 256)


def _stack(shape: str, bits: int | None, group_size: int) -> tuple[list[nn.Module], Counter[str]]:
    """The model's linears in one form; `bits` None is dense bf16."""
    generator = torch.Generator().manual_seed(0)
    modules, kernels = [], Counter()
    layer_shapes, layers = SHAPES[shape]
    for _ in range(layers):
        for in_features, out_features in layer_shapes:
            weight = torch.randn(out_features, in_features, generator=generator) * 0.02
            if bits is None:
                linear = nn.Linear(in_features, out_features, bias=False)
                linear.weight.data = weight
                modules.append(linear.to("cuda", torch.bfloat16))
                continue
            layer = QuantLinear.from_quantized(rtn_quantize(weight, bits, group_size, sym=True), None, "gptq")
            layer = layer.to("cuda")
            kernels[layer.prepare(torch.bfloat16).kernel] += 1
            modules.append(layer)
    return modules, kernels


@torch.inference_mode()
def _time(modules: list[nn.Module], batch: int, iterations: int) -> float:
    """Milliseconds for one pass of a batch through every layer (inputs sized per layer)."""
    widths = {module.in_features for module in modules}
    inputs = {k: torch.randn(batch, k, device="cuda", dtype=torch.bfloat16) for k in widths}
    for module in modules:  # warm-up: kernels compiled and caches filled
        module(inputs[module.in_features])
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        for module in modules:
            module(inputs[module.in_features])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this bench measures the CUDA kernels")
    forms = {"bf16 dense": (None, 0), "int4 (gptq)": (4, args.group_size), "int8 per-channel": (8, -1)}
    stacks = {}
    for name, (bits, group_size) in forms.items():
        stacks[name], kernels = _stack(args.shape, bits, group_size)
        print(f"{name}: kernels {dict(kernels) or {'dense': len(stacks[name])}}")
    print(
        f"{args.shape} on {torch.cuda.get_device_name()}, torch {torch.__version__}, group {args.group_size}"
    )
    print(f"{'batch':>5}  " + "  ".join(f"{name:>22}" for name in forms))
    for batch in BATCHES:
        best = dict.fromkeys(forms, float("inf"))
        for _ in range(args.rounds):
            for name in forms:
                best[name] = min(best[name], _time(stacks[name], batch, args.iterations))
        dense = best["bf16 dense"]
        cells = [f"{best[name]:8.3f} ms (×{dense / best[name]:.2f})" for name in forms]
        print(f"{batch:>5}  " + "  ".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
