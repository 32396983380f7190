"""Prune, then distill: how much of the pruning loss a few CPU minutes of distillation win back.

The student is the teacher pruned by 50% of its MLP channels and 25% of its query heads by default
(activation importance, no retraining). It is trained on teacher generations twice, on the same
tokens, steps and seed: with knowledge distillation (kl+ce, the teacher online) and with plain
cross-entropy on the teacher's text. Prints perplexity and KLD to the teacher for each, the share
of the perplexity gap recovered, and the wall time of each phase (a markdown table: the README's).

    python bench/distill.py                          # the test demo model (--fast)
    python bench/distill.py --model demo-full --steps 600
    python bench/distill.py --model stories260K --heads 0.5   # 25% of 8 heads is not a Llama at 64 wide
    python bench/distill.py --model smollm2 --samples 256 --steps 60 --batch-size 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quality_table import model_and_texts

import compress
from compress import console
from compress.artifact import read_manifest
from compress.distill.generate import generate
from compress.distill.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "demo-full", "stories260K", "smollm2"], default="demo")
    parser.add_argument("--mlp", type=float, default=0.5, help="share of MLP channels pruned")
    parser.add_argument("--heads", type=float, default=0.25, help="share of query heads pruned")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    console.mode.quiet = True
    work = Path(tempfile.mkdtemp(prefix="compress-distill-"))
    teacher, prompts, heldout = model_and_texts(args.model, work)

    started = time.perf_counter()
    student = compress.prune(
        teacher, work / "pruned", mlp=args.mlp, heads=args.heads, calib=prompts, calib_samples=64
    )
    prune_s = time.perf_counter() - started
    started = time.perf_counter()
    data = generate(
        teacher, work / "generations", prompts=prompts, samples=args.samples,
        max_new_tokens=args.max_new_tokens, prompt_tokens=32,
    )  # fmt: skip
    generate_s = time.perf_counter() - started
    common = dict(
        data=data, steps=args.steps, lr=args.lr, batch_size=args.batch_size, suite="quick", eval_data=heldout
    )
    rows = {}
    for loss in ("kl+ce", "ce"):
        started = time.perf_counter()
        out = train(teacher, str(student), work / loss.replace("+", "-"), loss=loss, **common)
        report = read_manifest(out).extra["distillation"]
        rows[loss] = (report["evaluation"], time.perf_counter() - started)

    evaluation = rows["kl+ce"][0]
    print(
        f"\n{args.model}: prune MLP {args.mlp:.0%} + heads {args.heads:.0%} {prune_s:.0f} s; "
        f"{args.samples} teacher completions of up to {args.max_new_tokens} tokens {generate_s:.0f} s; "
        f"{args.steps} steps × {args.batch_size}\n"
    )
    print("| model | ppl | KLD to teacher | same top-1 | gap recovered | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| teacher | {evaluation['teacher']['ppl']:.2f} | - | - | - | - |")
    before = evaluation["before"]
    print(
        f"| pruned (no training) | {before['ppl']:.2f} | {before['kld_mean']:.4f} "
        f"| {before['same_top1']:.3f} | 0% | - |"
    )
    for loss, (result, seconds) in rows.items():
        after = result["after"]
        print(
            f"| distilled, {loss} | {after['ppl']:.2f} | {after['kld_mean']:.4f} | {after['same_top1']:.3f} "
            f"| {result['gap_recovered']:.1%} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
