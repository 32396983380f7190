"""Structured pruning quality: every target with every importance method on a trained model.

Targets: MLP 30%, heads 25%, hidden 20% (width, ranked by activation / magnitude / taylor / random)
and 1 or 2 blocks removed (depth, ranked by influence / loss / random). Each artifact is scored by
the shared harness against the unpruned model on held-out text: perplexity and KLD (no retraining:
this is the damage distillation has to repair). Prints a markdown table (the README's).

    python bench/prune_quality.py --model demo           # the test demo model (--fast), stdlib text
    python bench/prune_quality.py --model stories260K    # ../shared/models/stories260K, TinyStories
    python bench/prune_quality.py --model smollm2 --depth-methods influence,random   # SmolLM2-135M

A target the architecture cannot express (transformers' LlamaConfig requires hidden_size to be a
multiple of the head count) is reported with its one-line reason.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quality_table import model_and_texts

import compress
from compress import console
from compress.errors import CompressError
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.suite import Suite

WIDTH = [("MLP 30%", {"mlp": 0.3}), ("heads 25%", {"heads": 0.25}), ("hidden 20%", {"hidden": 0.2})]
DEPTH = [("1 layer", {"layers": 1}), ("2 layers", {"layers": 2})]
WIDTH_METHODS = ("activation", "magnitude", "taylor", "random")
DEPTH_METHODS = ("influence", "loss", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "stories260K", "smollm2"], default="demo")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--depth-methods", default=",".join(DEPTH_METHODS),
        help="block importances to run (loss removes each block in turn: 30 forwards on SmolLM2)",
    )  # fmt: skip
    args = parser.parse_args()
    console.mode.quiet = True
    work = Path(tempfile.mkdtemp(prefix="compress-prune-"))
    model, calib, data = model_and_texts(args.model, work)
    runs = [(label, target, {"importance": m}) for label, target in WIDTH for m in WIDTH_METHODS]
    depth_methods = args.depth_methods.split(",")
    runs += [(label, target, {"layer_importance": m}) for label, target in DEPTH for m in depth_methods]
    artifacts, rows, failures = [], {}, []
    for label, target, method in runs:
        name = f"{label} · {next(iter(method.values()))}"
        out = work / name.replace(" ", "").replace("%", "").replace("·", "-")
        try:
            compress.prune(
                model, out, calib=calib, calib_samples=args.calib_samples, seq_len=args.seq_len,
                device="cpu", **target, **method,
            )  # fmt: skip
        except CompressError as exc:
            failures.append((label, next(iter(method.values())), str(exc)))
            continue
        artifacts.append(str(out))
        rows[str(out)] = (label, next(iter(method.values())))
    suite = Suite(
        name="prune", metrics=["ppl", "kld", "size"], data=data, seq_len=args.seq_len,
        max_tokens=64 * args.seq_len, dtype="float32", baseline_dtype="float32",
    )  # fmt: skip
    report, _ = evaluate(EvalRequest(artifacts, suite, baseline=model, reuse=False))
    base = report.baseline.metrics
    parameters = base["size"]["parameters"]
    print(f"\n{args.model}: baseline ppl {base['ppl']['value']:.4f}, {parameters:,} parameters\n")
    print("| target | importance | parameters | ppl | KLD mean | same top-1 |")
    print("|---|---|---:|---:|---:|---:|")
    for result in report.results:
        label, method = rows[result.path]
        m = result.metrics
        print(
            f"| {label} | {method} | {m['size']['parameters']:,} | {m['ppl']['value']:.3f} | "
            f"{m['kld']['mean']:.4f} | {m['same_top1']:.3f} |"
        )
    for label, method, reason in failures:
        print(f"| {label} | {method} | n/a: {reason} | | | |")


if __name__ == "__main__":
    main()
