"""Decode and prefill speed of every runtime format, side by side, against float32.

Candidates, all in one process and timed in turns (a, b, c, …, a, b, c, …) on the same prompts,
best of `--repeats` with the spread printed, at `--threads` threads:

- fp32 and bf16: the dense model as transformers runs it;
- int8 (bnb): bitsandbytes LLM.int8 through transformers (a memory format on CPU, not a speed one);
- 8-bit per-channel: GPTQ layout, one group per row, on `aten._weight_int8pack_mm`;
- GPTQ 4-bit g128 and AWQ 4-bit g128: the GPTQ and AWQ GEMM layouts on `aten._weight_int4pack_mm`.

The packed candidates are built in memory from round-to-nearest integers in each layout, then
repacked by the same `prepare_runtime` that `load_packed` runs: speed depends on the layout,
shapes and kernels, not on which integers GPTQ or AWQ would have chosen.

Models: `92m`, a Llama of the issue's shape (hidden 1024, MLP 2816, 8 layers, GQA 16/4, vocab
2048, tied; random weights, fine for speed), and `smollm2`, the real SmolLM2-135M
(`compress.realmodel`). Nothing is asserted.

    python bench/runtime.py [--model 92m|smollm2|both] [--threads 2] [--repeats 5]
                            [--prompt-tokens 128 --new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from compress.evaluate.speed import SpeedSettings, measure_speeds, weight_memory_bytes
from compress.modeling import find_decoder_blocks, find_linear_layers
from compress.quantize.qlinear import QuantLinear
from compress.quantize.rtn import effective_group_size, rtn_quantize
from compress.quantize.runtime import prepare_runtime, runtime_summary

warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")  # bitsandbytes, on every int8 call


def shape_92m(directory: Path) -> Path:
    """The issue's 92M Llama, random weights, saved once."""
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(directory)
    return directory


def dense(path: Path, dtype: torch.dtype) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def bnb_int8(path: Path) -> nn.Module:
    config = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, device_map="cpu", dtype=torch.float32
    ).eval()


def packed(path: Path, bits: int, group_size: int, sym: bool, fmt: str) -> nn.Module:
    """Every block linear as a `QuantLinear` in `fmt`, then repacked for the runtime's kernels."""
    model = dense(path, torch.float32)
    blocks_path, blocks = find_decoder_blocks(model)
    for index, block in enumerate(blocks):
        for layer in find_linear_layers(block):
            module = layer.module
            size = effective_group_size(module.in_features, group_size)
            qw = rtn_quantize(module.weight.detach(), bits, size, sym)
            replacement = QuantLinear.from_quantized(qw, module.bias, fmt)
            model.set_submodule(f"{blocks_path}.{index}.{layer.name}", replacement)
    model = model.to(torch.bfloat16)
    prepare_runtime(model, torch.bfloat16)
    return model


def candidates(path: Path) -> dict[str, nn.Module]:
    return {
        "fp32": dense(path, torch.float32),
        "bf16": dense(path, torch.bfloat16),
        "int8 (bnb)": bnb_int8(path),
        "8-bit per-channel": packed(path, 8, -1, True, "gptq"),
        "GPTQ 4-bit g128": packed(path, 4, 128, True, "gptq"),
        "AWQ 4-bit g128": packed(path, 4, 128, False, "awq"),
    }


def report(name: str, models: dict[str, nn.Module], settings: SpeedSettings) -> None:
    speeds = measure_speeds(models, settings)
    base = speeds["fp32"]
    first = next(iter(speeds.values()))
    print(
        f"\n## {name}: {settings.prompt_tokens}-token prompt, {settings.new_tokens} new tokens, "
        f"best of {settings.repeats} interleaved, {first['threads']} threads, "
        f"load {first['loadavg_1m']:.2f}"
    )
    print(
        "| runtime | dtype · kernels | weights MB | prefill tok/s (×) | decode b1 tok/s (×) | "
        "decode b8 tok/s (×) | spread b1/b8 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, speed in speeds.items():
        runtime = runtime_summary(models[label])
        kernels = ", ".join(f"{c} {k}" for k, c in runtime["kernels"].items()) or "dense"
        cells = [
            f"{speed['prefill_tok_s']:.0f} (×{speed['prefill_tok_s'] / base['prefill_tok_s']:.2f})",
            *(
                f"{speed['decode_tok_s'][b]:.1f} (×{speed['decode_tok_s'][b] / base['decode_tok_s'][b]:.2f})"
                for b in ("1", "8")
            ),
        ]
        spread = "/".join(f"{speed['decode_spread_pct'][b]:.0f}%" for b in ("1", "8"))
        memory = weight_memory_bytes(models[label]) / 2**20
        print(f"| {label} | {runtime['dtype']} · {kernels} | {memory:.0f} | {' | '.join(cells)} | {spread} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("92m", "smollm2", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SpeedSettings(
        prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_sizes=[1, 8], repeats=args.repeats
    )
    if args.model in ("92m", "both"):
        with tempfile.TemporaryDirectory() as scratch:
            report("92M Llama (random weights)", candidates(shape_92m(Path(scratch))), settings)
    if args.model in ("smollm2", "both"):
        from compress.realmodel import smollm2_dir

        report("SmolLM2-135M", candidates(smollm2_dir()), settings)


if __name__ == "__main__":
    main()
