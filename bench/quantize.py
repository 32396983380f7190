"""Quantization cost: wall time and peak memory per method, side by side.

Each (model, method) runs `compress.quantize` in a fresh subprocess (so peak RSS is that run's own),
on a GPT-2-small-shaped model with random weights (speed does not depend on training) and on the
trained demo model, with the same calibration for every calibrated method. Nothing here is
asserted. Last, the streaming case: GPTQ with `--max-memory` a quarter of the model's float32 size,
its resident-memory growth against one block plus activations.

With the `interop` extra installed, gptqmodel's GPTQ runs on the same model, the same calibration
windows (passed to it as token ids, so both tools see identical tokens) and matched settings (4 bits,
symmetric, act order with static groups, damping 0.01, one explicit group size that divides every
width on both sides), beside a compress GPTQ run with those settings; both artifacts are then read
by compress's own loader and scored by KLD against the float32 model on held-out windows. The ratio
of wall times is the figure (goal: compress at most half of gptqmodel's time at equal or lower KLD).

    python bench/quantize.py [--samples 32 --seq-len 256 --layers 12] [--models gpt2,demo,smollm2]
                             [--streaming synthetic|smollm2|none] [--streaming-runs 3]

`smollm2` is the real SmolLM2-135M (`compress.realmodel`); its per-method costs and quality are in
`bench/quality_table.py --model smollm2`, so here it joins the gptqmodel comparison only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Peak RSS of this process alone: Linux's VmHWM belongs to the address space exec made. ru_maxrss
# would not do: it carries over the parent's RSS at fork time (the parent holds a model and torch),
# which floors every child's figure at the parent's size.
PEAK_RSS = """
import resource
def _status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024
def peak_rss_mib():
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def rss_mib():
    try:
        return _status_mib("VmRSS")
    except OSError:
        return 0.0
def file_mib():  # file-backed resident pages: the libraries' code and data as far as it was touched
    try:
        return _status_mib("RssFile")
    except (OSError, StopIteration):
        return 0.0
"""
RUN = (
    PEAK_RSS
    + """
import json, sys, time
from pathlib import Path
# Imports before the clock (and before the resident-size baseline): they are the process, not the run.
import compress, compress.quantize.runner, compress.quantize.calibrated, compress.quantize.packed
import compress.streaming, compress.data, transformers.models.gpt2.modeling_gpt2
import transformers.models.llama.modeling_llama
model, out, method, bits, calib, samples, seq_len, options = sys.argv[1:9]
base_rss, base_file = rss_mib(), file_mib()
start = time.perf_counter()
compress.quantize(model, out, method=method, bits=int(bits), calib=calib, calib_samples=int(samples),
                  seq_len=int(seq_len), device="cpu", **json.loads(options))
phases = json.loads((Path(out) / "compress.json").read_text())["phases"]
growth = [(p["peak_rss_bytes"] - p["start_rss_bytes"]) / 2**20 for p in phases if p["name"] == "quantize"]
print(json.dumps({"wall_s": time.perf_counter() - start,
                  "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base_rss,
                  "file_growth_mib": file_mib() - base_file,
                  "quantize_growth_mib": growth[0] if growth else None}))
"""
)
# Calibration is loaded (token ids) and gptqmodel imported before the clock, as compress is above.
# GPTQModel.load, quantize and save are timed: the same span as compress.quantize (load .. save).
GPTQMODEL_RUN = (
    PEAK_RSS
    + """
import json, sys, time, torch
from gptqmodel import GPTQModel, QuantizeConfig
model, out, windows, group_size = sys.argv[1:5]
calibration = torch.load(windows).tolist()
start = time.perf_counter()
config = QuantizeConfig(bits=4, group_size=int(group_size), sym=True, desc_act=True, static_groups=True,
                        act_group_aware=False, damp_percent=0.01)
loaded = GPTQModel.load(model, config, device="cpu", dtype=torch.float32)
loaded.quantize(calibration, batch_size=1)
loaded.save(out)
print(json.dumps({"wall_s": time.perf_counter() - start,
                  "peak_rss_mib": peak_rss_mib()}))
"""
)
# Group sizes both tools accept and that divide every quantized width: GPT-2 small's 768 and 3072
# take 128; the demo model's 256 and 688 (= 16 x 43) only 16 of gptqmodel's torch-kernel sizes.
# SmolLM2's 576 and 1536 take 64.
COMPARISON_GROUP_SIZE = {"gpt2-small (random)": 128, "demo (trained)": 16, "SmolLM2-135M": 64}
HELDOUT = "builtin:python-stdlib:heldout"
HELDOUT_WINDOWS = 16
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


def streaming_model(path: Path, layers: int) -> None:
    """A Llama whose blocks dominate its size (1024 wide, 2816 MLP, small vocabulary), saved in
    float32 with the demo tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.demo import demo_model

    tokenizer_dir, _ = demo_model(fast=True)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    for file in tokenizer_dir.glob("tokenizer*"):
        (path / file.name).write_bytes(file.read_bytes())


def model_sizes(path: Path) -> dict:
    """A saved model's float32 size, one decoder block's, and its hidden width (from the config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    block = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    total = sum(p.numel() * 4 for p in model.parameters())
    return {"block_mb": block / 1e6, "total_mb": total / 1e6, "hidden": config.hidden_size}


def bench_streaming(
    root: Path,
    sample_counts: list[int],
    seq_len: int,
    model: Path | None = None,
    layers: int = 8,
    runs: int = 3,
) -> None:
    """GPTQ on a model ≥4× `--max-memory`, streamed, beside the same run with the model in memory,
    at each calibration size in `sample_counts`.

    Figures against one float32 block plus the calibration activations (a block's inputs and
    outputs, float32), the engine's floor:
    - the growth of resident memory over the process's size after imports (torch and transformers
      alone take a few hundred MB), which also counts the tokenizer, the calibration text, the
      library code paged in on first use and the output written at the end;
    - of that growth, the library pages (file-backed resident memory gained: torch's kernels,
      LAPACK, the tokenizer's code; shared with every process that maps them, clean, and dropped
      by the kernel under memory pressure rather than counted against the process), and the
      growth without them: the run's own memory. The library pages are complete after the first
      block, before the peak, so the subtraction is exact there;
    - the growth within the quantize phase over its start (the manifest's phases): the calibration
      engine alone.
    Several calibration sizes, because the engine's own costs (GPTQ's Hessian work on the widest
    layer, the packed shard being filled) do not grow with the calibration while the floor does: a
    small calibration shows them at their largest relative size. `model` None: a synthetic Llama
    whose blocks dominate its size; else that model (e.g. SmolLM2, whose embedding is a fifth of
    it). Each case runs `runs` times, one after the other, and the table gives the median and range.
    """
    if model is None:
        model = root / "streaming"
        streaming_model(model, layers)
        label = f"Llama {layers} x (1024 wide, MLP 2816)"
    else:
        label = model.name
    sizes = model_sizes(model)
    budget = f"{int(sizes['total_mb'] / 4)}MB"
    print(
        f"\nstreaming: {label}, float32 weights {sizes['total_mb']:.0f} MB, "
        f"one block {sizes['block_mb']:.1f} MB, --max-memory {budget}, {runs} runs each (median, range)\n"
    )
    print(
        "| calibration | run | wall s | floor MB (block + activations) | resident growth MB | / floor "
        "| of which library pages MB | own memory / floor | quantize phase / floor |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for samples in sample_counts:
        # The calibration text as a small file: reading the whole stdlib corpus to sample from it
        # would cost more memory than a block, and that cost belongs to the data, not to the engine.
        calib = calibration_text(model, samples, seq_len, root / f"calibration-{samples}.txt")
        activations = 2 * samples * seq_len * sizes["hidden"] * 4 / 1e6
        floor = sizes["block_mb"] + activations
        for run_label, options in (("in memory", {}), (f"--max-memory {budget}", {"max_memory": budget})):
            out = root / f"streaming-{samples}-{'stream' if options else 'memory'}"
            row = f"| {samples} × {seq_len} | {run_label}"
            options = {**options, "force": True}  # the same directory each repeat
            repeats = [run(model, out, "gptq", 4, samples, seq_len, calib, **options) for _ in range(runs)]
            if failed := next((figures for figures in repeats if "error" in figures), None):
                print(f"{row} | failed: {failed['error']} | | | | | | |")
                continue
            wall = statistics.median(figures["wall_s"] for figures in repeats)
            growth = [(f["peak_rss_mib"] - f["base_rss_mib"]) * 1.048576 for f in repeats]
            library = [f["file_growth_mib"] * 1.048576 for f in repeats]
            own = [total - pages for total, pages in zip(growth, library, strict=True)]
            engine = [f["quantize_growth_mib"] * 1.048576 for f in repeats]
            print(
                f"{row} | {wall:.1f} | {floor:.1f} | {_spread(growth)} | {_spread(growth, floor)} "
                f"| {_spread(library)} | {_spread(own, floor)} | {_spread(engine, floor)} |"
            )


def _spread(values: list[float], per: float | None = None) -> str:
    """Median and range of several runs' figures (MB, or ratios to `per` when given)."""
    if per is not None:
        return "{:.2f} ({:.2f}–{:.2f})".format(*(v / per for v in _median_range(values)))
    return "{:.0f} ({:.0f}–{:.0f})".format(*_median_range(values))


def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run(
    model: Path,
    out: Path,
    method: str,
    bits: int,
    samples: int,
    seq_len: int,
    calib: str = CALIBRATION,
    **options,
) -> dict:
    """One `compress.quantize` in a fresh interpreter, so its peak RSS is its own."""
    argv = [str(model), str(out), method, str(bits), calib, str(samples), str(seq_len)]
    return _subprocess_figures(RUN, [*argv, json.dumps(options)])


def _subprocess_figures(script: str, argv: list[str], cwd: Path | None = None) -> dict:
    """Run `script` in a fresh interpreter; its last stdout line is the figures as JSON."""
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def gptqmodel_run(model: Path, out: Path, windows: Path, group_size: int) -> dict:
    """gptqmodel's GPTQ in a fresh interpreter, run from `out`'s parent (it writes logs/ there).

    Its CPU worker pool wants 2 workers and fails on smaller machines unless told otherwise.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(2, os.cpu_count() or 1))))
    argv = [str(model), str(out), str(windows), str(group_size)]
    return _subprocess_figures(GPTQMODEL_RUN, argv, cwd=out.parent)


def calibration_windows(model: Path, samples: int, seq_len: int, path: Path) -> Path:
    """The exact windows compress calibrates on (same source, count, length, seed 0), saved."""
    import torch

    from compress.data import sample_windows
    from compress.modeling import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(model))
    torch.save(sample_windows(tokenizer, CALIBRATION, samples, seq_len, seed=0).input_ids, path)
    return path


def calibration_text(model: Path, samples: int, seq_len: int, path: Path) -> str:
    """Twice the tokens `samples` windows need, sampled from the usual source, decoded to a file."""
    from compress.data import sample_windows
    from compress.modeling import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(model))
    windows = sample_windows(tokenizer, CALIBRATION, 2 * samples, seq_len, seed=0).input_ids
    path.write_text("\n\n".join(tokenizer.decode(row) for row in windows))
    return str(path)


def kld_against_fp32(model: Path, artifacts: list[Path], seq_len: int) -> list[float]:
    """Mean per-token KLD of each packed artifact against the float32 model on held-out windows.

    Both tools' artifacts go through compress's own loader (it reads gptqmodel's GPTQ checkpoints),
    so the figure compares the quantized weights, not two kernels' float16 rounding.
    """
    from compress.data import sequential_windows
    from compress.evaluate.divergence import kl_divergence
    from compress.modeling import load_model, load_tokenizer, resolve_model
    from compress.quantize.packed import load_packed

    source = resolve_model(model)
    ids = sequential_windows(
        load_tokenizer(source), HELDOUT, seq_len, max_tokens=HELDOUT_WINDOWS * seq_len
    ).input_ids
    base = _log_probs(load_model(source, "float32", "cpu", False), ids)
    klds = []
    for artifact in artifacts:
        log_probs = _log_probs(load_packed(resolve_model(artifact), "cpu", "float32"), ids)
        klds.append(kl_divergence(base, log_probs).mean().item())
    return klds


def _log_probs(model, ids):
    """Next-token log-probabilities for every position of every window, flattened."""
    import torch

    with torch.inference_mode():
        logits = torch.cat([model(input_ids=window[None]).logits[0] for window in ids])
    return torch.log_softmax(logits.float(), dim=-1)


def compare_gptqmodel(models: dict[str, Path], root: Path, samples: int, seq_len: int) -> None:
    """compress GPTQ beside gptqmodel GPTQ: same model, windows and settings; time, memory, KLD."""
    if not models:
        return
    if importlib.util.find_spec("gptqmodel") is None:
        print("\ngptqmodel comparison skipped: it needs the `interop` extra (pip install '.[interop]')")
        return
    print(
        "\ncompress vs gptqmodel GPTQ: 4 bits, sym, act order + static groups, damp 0.01, the same "
        f"calibration token ids; KLD vs float32 on {HELDOUT_WINDOWS} × {seq_len} tokens of {HELDOUT}\n"
    )
    print("| model | tool | group | wall s | peak RSS MiB | KLD mean |")
    print("|---|---|---:|---:|---:|---:|")
    for label, model in models.items():
        _compare_one(label, model, root / f"vs-{label[:4]}", samples, seq_len)


def _compare_one(label: str, model: Path, work: Path, samples: int, seq_len: int) -> None:
    """One model's two rows and the compress/gptqmodel time ratio."""
    work.mkdir()
    group = COMPARISON_GROUP_SIZE[label]
    windows = calibration_windows(model, samples, seq_len, work / "windows.pt")
    outs = {"compress": work / "compress", "gptqmodel": work / "gptqmodel"}
    settings = {"group_size": group, "sym": True, "act_order": True, "damp_percent": 0.01}
    figures = {
        "compress": run(model, outs["compress"], "gptq", 4, samples, seq_len, **settings),
        "gptqmodel": gptqmodel_run(model, outs["gptqmodel"], windows, group),
    }
    failed = {tool: f["error"] for tool, f in figures.items() if "error" in f}
    klds = dict.fromkeys(outs, float("nan"))
    if not failed:
        klds = dict(zip(outs, kld_against_fp32(model, list(outs.values()), seq_len), strict=True))
    for tool, f in figures.items():
        if tool in failed:
            print(f"| {label} | {tool} | {group} | failed: {failed[tool]} | | |")
        else:
            print(
                f"| {label} | {tool} | {group} | {f['wall_s']:.1f} | {f['peak_rss_mib']:.0f} | "
                f"{klds[tool]:.3e} |"
            )
    if not failed:
        ratio = figures["compress"]["wall_s"] / figures["gptqmodel"]["wall_s"]
        print(f"| {label} | time ratio compress/gptqmodel | | {ratio:.2f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 blocks (12 = GPT-2 small)")
    parser.add_argument("--models", default="gpt2,demo", help="comma-separated: gpt2, demo, smollm2")
    parser.add_argument(
        "--streaming",
        choices=("synthetic", "smollm2", "none"),
        default="synthetic",
        help="the --max-memory run",
    )
    parser.add_argument(
        "--streaming-samples",
        default=None,
        help="comma-separated calibration window counts for the --max-memory run, each within the budget "
        "(default: 16,64,96 on SmolLM2, 96 being the most that fits its budget; 16 on the synthetic model)",
    )
    parser.add_argument("--streaming-runs", type=int, default=3, help="runs per streaming case")
    args = parser.parse_args()
    from compress.demo import demo_model

    chosen = set(args.models.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models: dict[str, Path] = {}
        if "gpt2" in chosen:
            gpt2_small(root / "gpt2", args.layers)
            models["gpt2-small (random)"] = root / "gpt2"
        if "demo" in chosen:
            models["demo (trained)"] = demo_model(fast=False)[0]
        if models:
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
        if "smollm2" in chosen:
            from compress.realmodel import smollm2_dir

            models["SmolLM2-135M"] = smollm2_dir()
        compare_gptqmodel(models, root, args.samples, args.seq_len)
        counts = args.streaming_samples or ("16,64,96" if args.streaming == "smollm2" else "16")
        sample_counts = [int(count) for count in counts.split(",")]
        if args.streaming == "synthetic":
            bench_streaming(root, sample_counts, args.seq_len, runs=args.streaming_runs)
        elif args.streaming == "smollm2":
            from compress.realmodel import smollm2_dir

            bench_streaming(root, sample_counts, args.seq_len, smollm2_dir(), runs=args.streaming_runs)


if __name__ == "__main__":
    main()
