"""Quantization cost: wall time and peak memory per method, side by side.

Each (model, method) runs `compress.quantize` in a fresh subprocess (so peak RSS is that run's own),
on a GPT-2-small-shaped model with random weights (speed does not depend on training) and on the
trained demo model, with the same calibration for every calibrated method. Nothing here is
asserted. (The side-by-side run of gptqmodel on the same model and calibration comes with the
`interop` extra; see docs/decisions.md.)

    python bench/quantize.py [--samples 32 --seq-len 256 --layers 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, resource, sys, time
import compress, compress.quantize.runner, transformers.models.gpt2.modeling_gpt2  # imports before the clock
model, out, method, bits, calib, samples, seq_len = sys.argv[1:8]
start = time.perf_counter()
compress.quantize(model, out, method=method, bits=int(bits), calib=calib, calib_samples=int(samples),
                  seq_len=int(seq_len), device="cpu")
print(json.dumps({"wall_s": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
METHODS = [("fp16", 16), ("int8", 8), ("nf4", 4), ("rtn", 4), ("gptq", 4), ("awq", 4)]
CALIBRATION = "builtin:python-stdlib:train"


def gpt2_small(path: Path, layers: int) -> None:
    """A GPT-2-small-shaped model with the demo tokenizer (calibration text needs a tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress.demo import demo_model

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=layers)).save_pretrained(path)
    tokenizer_dir, _ = demo_model(fast=True)
    for file in tokenizer_dir.glob("tokenizer*"):
        (path / file.name).write_bytes(file.read_bytes())


def run(model: Path, out: Path, method: str, bits: int, samples: int, seq_len: int) -> dict:
    argv = [str(model), str(out), method, str(bits), CALIBRATION, str(samples), str(seq_len)]
    result = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 blocks (12 = GPT-2 small)")
    args = parser.parse_args()
    from compress.demo import demo_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gpt2_small(root / "gpt2", args.layers)
        models = {"gpt2-small (random)": root / "gpt2", "demo (trained)": demo_model(fast=False)[0]}
        print(f"calibration: {args.samples} × {args.seq_len} tokens of {CALIBRATION}; 2 CPU threads\n")
        print("| model | method | bits | wall s | peak RSS MiB |")
        print("|---|---|---:|---:|---:|")
        for label, model in models.items():
            for method, bits in METHODS:
                if method == "awq" and label.startswith("gpt2"):
                    print(f"| {label} | awq | 4 | - | - (GPT-2's GELU MLP cannot fold AWQ scales) |")
                    continue
                figures = run(model, root / f"{label[:4]}-{method}", method, bits, args.samples, args.seq_len)
                if "error" in figures:
                    print(f"| {label} | {method} | {bits} | failed: {figures['error']} | |")
                else:
                    wall, peak = figures["wall_s"], figures["peak_rss_mib"]
                    print(f"| {label} | {method} | {bits} | {wall:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
