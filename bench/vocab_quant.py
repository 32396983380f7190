"""SmolLM2-135M at 4 bits with its output head and embedding kept, or quantized to 8 or 4 bits.

SmolLM2's 49,152 × 576 embedding is tied to its output head: a fifth of its weights, and in a
4-bit artifact a bfloat16 head is a large share of every decode step. Each candidate is a real
artifact (`compress quantize --method rtn --bits 4 --group-size 128` plus `--head-bits` and
`--embedding-bits`; RTN because the blocks' method changes neither size nor speed), loaded the way
`compress eval` loads it (bfloat16 activations, torch's int4/int8 kernels). Figures:

- weights: the artifact's safetensors bytes;
- KLD: `compress eval` against the float32 source on TinyStories, `--max-tokens` in 512-token
  windows (the same windows and top-K store for every candidate);
- decode: tokens/s at batch 1 and 8, all candidates and float32 timed in turns in this process,
  best of `--repeats`, with the output head's share of a decode step at batch 1.

Nothing is asserted.

    python bench/vocab_quant.py [--threads 2] [--repeats 5] [--max-tokens 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import compress
from compress import cli
from compress.evaluate.loaders import load_for_eval
from compress.evaluate.speed import SpeedSettings, measure_speeds
from compress.modeling import load_model, resolve_model
from compress.realmodel import smollm2_dir

STORIES = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "tinystories"
    / "tinystories_valid_first1000.txt"
)
#: (label, --head-bits, --embedding-bits)
CANDIDATES = [
    ("head kept", None, None),
    ("head 8-bit", 8, None),
    ("head 4-bit", 4, None),
    ("head + embedding 8-bit", 8, 8),
    ("head + embedding 4-bit", 4, 4),
]


def build(source: Path, scratch: Path) -> dict[str, Path]:
    return {
        label: compress.quantize(
            source,
            scratch / label.replace(" ", "-").replace("+", "and"),
            method="rtn",
            bits=4,
            device="cpu",
            head_bits=head_bits,
            embedding_bits=embedding_bits,
        )
        for label, head_bits, embedding_bits in CANDIDATES
    }


def divergences(source: Path, artifacts: dict[str, Path], max_tokens: int, report: Path) -> dict[str, dict]:
    argv = [
        "-q", "eval", *map(str, artifacts.values()), "--baseline", str(source), "--metrics", "ppl,kld,size",
        "--data", str(STORIES), "--seq-len", "512", "--max-tokens", str(max_tokens), "--json", str(report),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    by_path = {str(path): label for label, path in artifacts.items()}
    results = json.loads(report.read_text())["results"]
    return {by_path[r["path"]]: r["metrics"] for r in results if r.get("path") in by_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = smollm2_dir()
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = build(source, Path(scratch))
        metrics = divergences(source, artifacts, args.max_tokens, Path(scratch) / "eval.json")
        models = {"fp32": load_model(resolve_model(source), "float32", "cpu")}
        models |= {
            label: load_for_eval(resolve_model(path), "cpu", "auto") for label, path in artifacts.items()
        }
        settings = SpeedSettings(prompt_tokens=128, new_tokens=32, batch_sizes=[1, 8], repeats=args.repeats)
        speeds = measure_speeds(models, settings)
        base = speeds["fp32"]
        print(
            f"\n## SmolLM2-135M, RTN 4-bit blocks in groups of 64: {args.max_tokens} TinyStories tokens "
            f"for KLD; decode best of {args.repeats} interleaved, {base['threads']} threads, "
            f"load {base['loadavg_1m']:.2f}"
        )
        print("| head / embedding | weights MB | KLD mean | ppl | decode b1 tok/s (× fp32) | head share b1 | "
              "decode b8 tok/s (× fp32) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, path in artifacts.items():
            speed, measured = speeds[label], metrics[label]
            size = sum(file.stat().st_size for file in path.glob("*.safetensors")) / 1e6
            cells = [
                f"{speed['decode_tok_s'][b]:.1f} (×{speed['decode_tok_s'][b] / base['decode_tok_s'][b]:.2f})"
                for b in ("1", "8")
            ]
            print(
                f"| {label} | {size:.1f} | {measured['kld']['mean']:.4f} | {measured['ppl']['value']:.3f} | "
                f"{cells[0]} | {speed['head_share_pct']['1']:.0f}% | {cells[1]} |"
            )
        fp32 = [f"{base['decode_tok_s'][b]:.1f}" for b in ("1", "8")]
        print(f"| fp32 source | - | 0 | - | {fp32[0]} | {base['head_share_pct']['1']:.0f}% | {fp32[1]} |")


if __name__ == "__main__":
    main()
