"""How far the top-K baseline store's KLD is from the full-vocabulary KLD, and what it saves.

For each model, a 4-bit round-to-nearest copy (group 128, weights replaced by their dequantized
values in memory) is compared with the float32 original on held-out windows, position by
position: the exact KL over the whole vocabulary, and `topk_kl_divergence` (the store's estimate:
the baseline's top K tokens, plus M tokens sampled from the rest or, with M = 0, the rest as one
bucket) for several (K, M). Printed as a markdown table for docs/metrics.md, each cell the
relative error of the mean KLD and how many times smaller the store is than a float32 full one;
nothing is asserted (tests/test_eval.py checks the default).

    python bench/kld_store.py [--windows 16] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from compress.data import sequential_windows
from compress.demo import demo_model
from compress.evaluate.divergence import TopK, kl_divergence, topk_kl_divergence
from compress.evaluate.suite import StoreLayout
from compress.modeling import discover_layout, load_model, load_tokenizer, resolve_model
from compress.quantize.calibrated import set_weight, weight_matrix
from compress.quantize.rtn import rtn_quantize

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINYSTORIES = SHARED / "data" / "tinystories" / "tinystories_valid_first1000.txt"
#: (K, M): top-K tokens and M tail samples per position; M = 0 is the tail as one bucket.
KS = ((128, 0), (256, 0), (64, 64), (128, 128), (64, 192), (32, 224))


def models() -> list[tuple[str, Path, str]]:
    from compress.errors import CompressError
    from compress.realmodel import smollm2_dir

    found = [("demo (3.9M, vocab 2,048)", demo_model()[0], "builtin:python-stdlib:heldout")]
    if (SHARED / "models" / "stories260K").is_dir():
        found.append(("stories260K (vocab 512)", SHARED / "models" / "stories260K", str(TINYSTORIES)))
    try:
        found.append(("SmolLM2-135M (vocab 49,152)", smollm2_dir(), str(TINYSTORIES)))
    except CompressError as exc:
        print(f"SmolLM2 skipped: {exc}")
    return found


def rtn_copy(path: Path) -> torch.nn.Module:
    model = load_model(resolve_model(path), dtype="float32", device="cpu")
    layout = discover_layout(model)
    for index in range(len(layout.blocks)):
        for layer in layout.linear_layers(index):
            set_weight(layer, rtn_quantize(weight_matrix(layer), 4, 128, sym=True).dequantize())
    return model


@torch.inference_mode()
def measure(path: Path, data: str, windows: int, seq_len: int, seed: int) -> dict:
    source = resolve_model(path)
    ids = sequential_windows(load_tokenizer(source), data, seq_len, windows * seq_len).input_ids
    base, quantized = load_model(source, dtype="float32", device="cpu"), rtn_copy(path)
    full, estimates = [], {k: [] for k in KS}
    generator = torch.Generator().manual_seed(seed)
    for window in ids:
        p = F.log_softmax(base(input_ids=window[None]).logits[0, :-1].float(), -1)
        q = F.log_softmax(quantized(input_ids=window[None]).logits[0, :-1].float(), -1)
        full.append(kl_divergence(p, q))
        for k, m in KS:
            top = TopK.of(p, window[1:], k, m, generator)
            estimates[(k, m)].append(topk_kl_divergence(top, q))
    vocab = p.shape[-1]
    exact = torch.cat(full).double().mean().item()
    return {
        "vocab": vocab,
        "positions": sum(t.numel() for t in full),
        "exact": exact,
        "topk": {k: torch.cat(v).double().mean().item() for k, v in estimates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="the tail samples' seed")
    args = parser.parse_args()
    torch.manual_seed(0)
    header = " | ".join(f"K={k}, M={m}" for k, m in KS)
    print(f"| model | positions | full KLD | {header} |")
    print("|---|---:|---:|" + "---:|" * len(KS))
    for name, path, data in models():
        result = measure(path, data, args.windows, args.seq_len, args.seed)
        full_bytes = StoreLayout(None, 0, "float32").bytes_per_position(result["vocab"])
        cells = []
        for k, m in KS:
            error = result["topk"][(k, m)] / result["exact"] - 1
            ratio = full_bytes / StoreLayout(k, m, "float32").bytes_per_position(result["vocab"])
            cells.append(f"{error * 100:+.2f}% (×{ratio:.0f})")
        print(f"| {name} | {result['positions']:,} | {result['exact']:.5f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
