"""Peak memory of `compress eval` on a vocabulary-heavy model, scored by position slices and whole.

Small modern models are mostly vocabulary: Gemma 3 270M has 262,144 tokens. Scoring a batch of 8
windows of 512 tokens at that vocabulary holds 4.3 GB of float32 logits, and their log-softmax as
much again. `compress eval` runs the model's body once per batch and its output head (with the
family's own logit processing) on slices of positions, `scoring.LOG_PROB_CHUNK_BYTES` at a time.

The model is a tiny random `gemma3_text` (2 blocks, width 64, vocabulary 262,144, tied): the
logits, not the weights, are what grows. Each case runs in its own process: `compress eval MODEL
--baseline MODEL --metrics ppl,kld` on TinyStories at 512-token windows, batch 8, 16 windows; the
figure is the process's peak RSS minus its RSS just before the command started (imports done).
"Whole batches" sets the slice budget past the batch, which is how scoring worked before.

    python bench/vocab_eval_memory.py [--windows 16] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "data" / "tinystories" / "tinystories_valid_first1000.txt"
VOCAB = 262_144

#: Run in a child process: RSS before the command, then the command, then the peak.
CHILD = """
import json, resource, sys
import compress.evaluate.scoring as scoring
from compress import cli

def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()

chunk_bytes, argv = int(sys.argv[1]), sys.argv[2:]
if chunk_bytes:
    scoring.LOG_PROB_CHUNK_BYTES = chunk_bytes
before = rss_bytes()
code = cli.main(argv)
assert code == 0, code
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak}))
"""


def build_model(directory: Path) -> None:
    """A tiny random Gemma 3 with Gemma 3's vocabulary, and a small BPE tokenizer for the text."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    config = AutoConfig.for_model(
        "gemma3_text",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([STORIES.read_text()], vocab_size=4096, special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(directory)


def measure(model: Path, chunk_bytes: int, windows: int, seq_len: int, out: Path) -> dict:
    argv = [
        "-q", "eval", str(model), "--baseline", str(model), "--metrics", "ppl,kld",
        "--data", str(STORIES), "--seq-len", str(seq_len), "--max-tokens", str(windows * seq_len),
        "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(chunk_bytes), *argv], capture_output=True, text=True, check=True
    )
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    result = json.loads(out.read_text())["results"][0]["metrics"]
    return {"growth_gb": (memory["peak"] - memory["before"]) / 1e9, "kld_mean": result["kld"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "gemma3-262k"
        build_model(model)
        cases = {"position slices (default)": 0, "whole batches (before)": 2**40}
        print(f"tiny gemma3_text, vocabulary {VOCAB}, {args.windows} windows of {args.seq_len}, batch 8")
        print("| scoring | peak RSS growth | KLD (self) |\n|---|---|---|")
        for name, chunk_bytes in cases.items():
            row = measure(model, chunk_bytes, args.windows, args.seq_len, Path(scratch) / "r.json")
            print(f"| {name} | {row['growth_gb']:.2f} GB | {row['kld_mean']:.1e} |")


if __name__ == "__main__":
    main()
