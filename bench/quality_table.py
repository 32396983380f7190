"""Every quantization method at 8, 4 and 3 bits on a trained model: quality, size and time.

For each (method, bits): quantize through the Python API in a fresh interpreter (wall time and that
run's own peak RSS, see `bench/quantize.py`), then score every artifact with the shared harness
against the fp32 model on held-out text: KLD mean, same top-1, perplexity, weight bytes, bits per
weight. Prints a markdown table (the README's).

    python bench/quality_table.py --model demo           # the full demo model, stdlib text
    python bench/quality_table.py --model stories260K    # ../shared/models/stories260K, TinyStories
    python bench/quality_table.py --model smollm2        # SmolLM2-135M (compress.realmodel), TinyStories

TinyStories: the first 500 stories are the eval text and the last 500 the calibration text, so
the two never overlap. Demo model: `builtin:python-stdlib` train (calibration) and heldout (eval).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quantize import run as quantize_in_subprocess

import compress
from compress import console
from compress.artifact import describe
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.suite import Suite

SHARED = Path(__file__).resolve().parents[2] / "shared"
PLAN = [
    ("fp16", 16, {}),
    ("int8", 8, {}),
    ("rtn", 8, {}),
    ("gptq", 8, {}),
    ("nf4", 4, {}),
    ("fp4", 4, {}),
    ("rtn", 4, {}),
    ("gptq", 4, {}),
    ("awq", 4, {}),
    ("rtn", 3, {}),
    ("gptq", 3, {}),
    ("awq", 3, {}),
]


def model_and_texts(name: str, work: Path) -> tuple[str, str, str]:
    """A bench model and its calibration and held-out texts, shared by the quality benches.

    `demo` is the test demo model (`--fast`), `demo-full` the full one (stdlib text); stories260K
    and SmolLM2-135M (its wheel, `compress.realmodel`) take TinyStories, split in two halves.
    """
    if name in ("demo", "demo-full"):
        model = compress.demo_model(fast=name == "demo")[0]
        return str(model), "builtin:python-stdlib:train", "builtin:python-stdlib:heldout"
    if name == "smollm2":
        from compress.realmodel import smollm2_dir

        model = str(smollm2_dir())
    else:
        model = str(SHARED / "models" / "stories260K")
    calib, heldout = _stories_split(work)
    return model, calib, heldout


def _stories_split(directory: Path) -> tuple[str, str]:
    stories = (SHARED / "data" / "tinystories" / "tinystories_valid_first1000.txt").read_text()
    parts = stories.rstrip("\n").split("\n\n")
    (directory / "eval.txt").write_text("\n\n".join(parts[:500]))
    (directory / "calib.txt").write_text("\n\n".join(parts[500:]))
    return str(directory / "calib.txt"), str(directory / "eval.txt")


def _packed_bits(path: str) -> str:
    packed = describe(Path(path)).get("quantized_layers")
    return f"{packed['bits_per_weight']:.2f}" if packed else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "stories260K", "smollm2"], default="demo")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    console.mode.quiet = True
    work = Path(tempfile.mkdtemp(prefix="compress-quality-"))
    model, calib, data = model_and_texts("demo-full" if args.model == "demo" else args.model, work)
    artifacts, figures = [], {}
    for method, bits, options in PLAN:
        out = work / f"{method}-{bits}"
        run = quantize_in_subprocess(
            Path(model), out, method, bits, args.calib_samples, args.seq_len, calib, **options
        )
        if "error" in run:
            raise SystemExit(f"{out.name} failed: {run['error']}")
        figures[out.name] = run
        artifacts.append(str(out))
        print(
            f"quantized {out.name} in {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    suite = Suite(
        name="quality", metrics=["ppl", "kld", "size"], data=data, seq_len=args.seq_len,
        max_tokens=64 * args.seq_len, dtype="float32", baseline_dtype="float32",
    )  # fmt: skip
    report, _ = evaluate(EvalRequest(artifacts, suite, baseline=model, reuse=False))
    base = report.baseline.metrics
    size = base["size"]["weight_bytes"]
    print(f"\n{args.model}: baseline ppl {base['ppl']['value']:.4f}, {size:,} weight bytes\n")
    print(
        "| method | bits | KLD mean | same top-1 | ppl | weight bytes | bits/w | packed b/w | quantize s | "
        "peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in report.results:
        m = result.metrics
        print(
            f"| {result.method} | {result.name.split('-')[1]} | {m['kld']['mean']:.5f} | "
            f"{m['same_top1']:.4f} | "
            f"{m['ppl']['value']:.4f} | {m['size']['weight_bytes']:,} | {m['size']['bits_per_weight']:.2f} | "
            f"{_packed_bits(result.path)} | {figures[result.name]['wall_s']:.1f} | "
            f"{figures[result.name]['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
