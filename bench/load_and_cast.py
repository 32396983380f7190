"""fp16 cast: `compress quantize --method fp16` against the naive transformers path, side by side.

The naive path loads fp32 weights, calls `.half()` and saves; `compress` loads straight into fp16
and adds fingerprints, a manifest and an atomic rename. Both run in fresh subprocesses on a
GPT-2-small-shaped model (random weights: speed and memory do not depend on training), and the
figures are wall time and peak resident memory, printed as ratios. Nothing here is asserted.

    python bench/load_and_cast.py [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Library imports happen before the clock starts in both scripts: the figure is the work itself.
WARM_IMPORTS = "import transformers.models.gpt2.modeling_gpt2, transformers.modeling_utils\n"

NAIVE = (
    WARM_IMPORTS
    + """
import json, resource, sys, time, torch
from transformers import AutoModelForCausalLM
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).half()
model.save_pretrained(sys.argv[2])
print(json.dumps({"wall_s": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

COMPRESS = (
    WARM_IMPORTS
    + """
import json, resource, sys, time
import compress, compress.quantize.runner  # import outside the timed region, as the naive path does
start = time.perf_counter()
compress.quantize(sys.argv[1], sys.argv[2], method="fp16", device="cpu")
print(json.dumps({"wall_s": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)


def make_model(path: Path, layers: int) -> int:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run(script: str, source: Path, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", script, str(source), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 blocks (12 = GPT-2 small)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parameters = make_model(root / "model", args.layers)
        naive = run(NAIVE, root / "model", root / "naive")
        ours = run(COMPRESS, root / "model", root / "ours")
    print(f"GPT-2 shape, {args.layers} blocks, {parameters / 1e6:.0f}M parameters, fp32 → fp16, CPU")
    print(f"{'path':<34}{'wall s':>10}{'peak RSS MiB':>16}")
    print(f"{'transformers: load fp32, .half()':<34}{naive['wall_s']:>10.2f}{naive['peak_rss_mib']:>16.0f}")
    print(f"{'compress quantize --method fp16':<34}{ours['wall_s']:>10.2f}{ours['peak_rss_mib']:>16.0f}")
    print(
        f"ratio compress/naive: wall ×{ours['wall_s'] / naive['wall_s']:.2f}, "
        f"peak memory ×{ours['peak_rss_mib'] / naive['peak_rss_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
