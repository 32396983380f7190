"""llama.cpp's own quantizations beside our GPTQ carried into GGUF, all scored by one harness.

For each model: llama.cpp Q8_0, Q4_0 and Q4_K_M (`export gguf` from the float model: llama.cpp's
quantizer and its per-tensor policy, as `llama-quantize` gives them), Q4_0 and Q4_K_M again with an
importance matrix from GPTQ's calibration text (`--calib`, as `llama-quantize --imatrix`); our GPTQ
4-bit (symmetric, groups of 32) exported as Q4_0 without rounding again; and that same GPTQ
artifact in our torch runtime. Every candidate is scored by `compress eval` against the float32
model on the same held-out token ids (KLD, same top-1, perplexity, size, decode speed at batch 1
with the thread count recorded, each timed beside the baseline). Prints a markdown table.

    python bench/export_gguf.py --model demo|stories260K|smollm2 [--threads 1] [--calib-samples 128]

Calibration and eval texts as in `bench/quality_table.py` (never overlapping).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from quality_table import model_and_texts

import compress
from compress import console
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.suite import Suite
from compress.export.runner import export_gguf
from compress.render import format_bytes


def _candidates(model: str, calib: str, work: Path, samples: int) -> dict[str, tuple[Path, float]]:
    """Every artifact to score, with the seconds it took to make."""
    made: dict[str, tuple[Path, float]] = {}
    imatrix = {"calib": calib, "calib_samples": samples, "seq_len": 256}  # GPTQ's calibration
    for file_type, options in (
        ("q8_0", {}), ("q4_0", {}), ("q4_0", imatrix), ("q4_k_m", {}), ("q4_k_m", imatrix),
    ):  # fmt: skip
        name = f"llama.cpp {file_type.upper()}" + (" + imatrix" if options else "")
        start = time.perf_counter()
        out = work / f"{file_type}{'-imatrix' if options else ''}"
        made[name] = (export_gguf(model, out, type=file_type, **options), time.perf_counter() - start)
    start = time.perf_counter()
    gptq = compress.quantize(
        model, work / "gptq", method="gptq", bits=4, group_size=32, group_fallback=True, sym=True,
        calib=calib, calib_samples=samples, seq_len=256,
    )  # fmt: skip
    gptq_s = time.perf_counter() - start
    start = time.perf_counter()
    exported = export_gguf(gptq, work / "gptq-q4_0", type="q4_0")
    made["our GPTQ as Q4_0 (llama.cpp)"] = (exported, gptq_s + time.perf_counter() - start)
    made["our GPTQ int4 g32 (torch)"] = (gptq, gptq_s)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories260K")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console.mode.quiet = True
    logging.disable(logging.WARNING)  # llama.cpp's and transformers' log lines, as the CLI does
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        work = Path(tmp)
        model, calib, heldout = model_and_texts(args.model, work)
        candidates = _candidates(model, calib, work, args.calib_samples)
        suite = Suite(
            name="bench-gguf", data=heldout, seq_len=256, max_tokens=args.max_tokens,
            metrics=["ppl", "kld", "size", "speed"],
        )  # fmt: skip
        suite.speed.batch_sizes = [1]
        report, _ = evaluate(
            EvalRequest([str(path) for path, _ in candidates.values()], suite, baseline=model, reuse=False)
        )
    base = report.baseline.metrics
    print(f"\n{args.model}: baseline ppl {base['ppl']['value']:.3f}, {args.threads} thread(s), held-out text")
    print("| candidate | runtime | KLD | same top-1 | ppl | size | bits/w | decode tok/s (× fp32) | made s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, (_, seconds)), result in zip(candidates.items(), report.results, strict=True):
        metrics, runtime = result.metrics, result.runtime
        speed = metrics["speed"]
        print(
            f"| {name} | {runtime.get('runtime', 'torch ' + runtime['dtype'])} "
            f"| {metrics['kld']['mean']:.2e} | {metrics['same_top1']:.4f} "
            f"| {metrics['ppl']['value']:.3f} | {format_bytes(metrics['size']['weight_bytes'])} "
            f"| {metrics['size']['bits_per_weight']:.2f} "
            f"| {speed['decode_tok_s']['1']:.1f} (×{speed['vs_baseline']['decode_1']:.2f}) | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
