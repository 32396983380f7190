"""The demo model: a small Llama trained offline, on the CPU, on Python's own standard library.

No hub is reachable in CI, and quality claims need a *trained* model (random weights make every
quantizer look alike), so `compress` builds its own: a byte-level BPE tokenizer and a Llama of a few
million parameters trained for a couple of minutes on `builtin:python-stdlib:train`, then scored on
the held-out files. The result is cached under a hash of its recipe, so it is built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from compress import console
from compress.cache import cache_root
from compress.data import TokenWindows, iter_documents, sample_windows, sequential_windows
from compress.evaluate.perplexity import perplexity
from compress.modeling import native_bf16
from compress.staging import staged_directory

TRAIN_SOURCE = "builtin:python-stdlib:train"
HELDOUT_SOURCE = "builtin:python-stdlib:heldout"
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
RECORD_NAME = "demo.json"
BUILDER_VERSION = 1  # bump when the training code changes what a recipe produces
#: Threads the demo trains with, whatever the caller's setting: the same build on every run of a
#: machine (another machine's CPU can still differ; the record says whether bf16 autocast ran).
TRAIN_THREADS = 2


class DemoRecipe(BaseModel):
    """Everything that decides the demo model; its hash keys the cache."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 688  # 128 does not divide it: group-size fallbacks get exercised
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4  # grouped-query attention, like current Llamas
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 300
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    tokenizer_chars: int = 4_000_000
    eval_tokens: int = 65_536
    seed: int = 0
    #: "auto" trains in bf16 autocast where the CPU computes bf16 natively; the other two force a
    #: choice, so one machine can check what another machine's build would give (quality tests).
    autocast: Literal["auto", "bf16", "fp32"] = "auto"


FULL_RECIPE = DemoRecipe()
FAST_RECIPE = DemoRecipe(
    vocab_size=1024,
    hidden_size=192,  # 8 heads of 24: 6 heads (25% pruned, one KV group) still divide it, as Llama requires
    intermediate_size=344,
    num_layers=3,
    num_heads=8,
    num_kv_heads=4,
    steps=240,
    learning_rate=4e-3,
    tokenizer_chars=1_500_000,
    eval_tokens=32_768,
)


def recipe_key(recipe: DemoRecipe) -> str:
    """Cache key: the recipe, the builder version, and what decides the training text (Python).

    The autocast setting enters resolved, so "auto" and the explicit choice it resolves to share a build.
    """
    payload = {
        "recipe": recipe.model_dump(exclude={"autocast"}),
        "builder": BUILDER_VERSION,
        "python": platform.python_version(),
        "bf16": _use_bf16_autocast(recipe),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _use_bf16_autocast(recipe: DemoRecipe) -> bool:
    """bf16 autocast where the CPU computes bf16 natively (about 1.7× faster here), fp32 elsewhere."""
    if recipe.autocast == "auto":
        return native_bf16(torch.device("cpu"))
    return recipe.autocast == "bf16"


def train_tokenizer(recipe: DemoRecipe):
    """A byte-level BPE tokenizer (GPT-2 style: no unknown tokens) trained on the training files."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    def limited_documents():
        used = 0
        for document in iter_documents(TRAIN_SOURCE, shuffle_seed=recipe.seed):
            if used >= recipe.tokenizer_chars:
                return
            used += len(document)
            yield document

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        limited_documents(), vocab_size=recipe.vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        model_max_length=recipe.seq_len * 2,
    )


def _build_model(recipe: DemoRecipe, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.seq_len * 2,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(config)


def _train(model, windows: TokenWindows, recipe: DemoRecipe) -> list[float]:
    """AdamW with linear warm-up and cosine decay, one pass over the sampled windows."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    # Consecutive windows come from the same file: shuffle them so each batch mixes many files.
    order = torch.randperm(windows.input_ids.shape[0], generator=torch.Generator().manual_seed(recipe.seed))
    batches = windows.input_ids[order].view(recipe.steps, recipe.batch_size, recipe.seq_len)
    autocast = _use_bf16_autocast(recipe)
    losses: list[float] = []
    model.train()
    with console.progress() as bar:
        task = bar.add_task("training demo model", total=recipe.steps, status="")
        for step in range(recipe.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=batches[step], labels=batches[step]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
    model.eval()
    return losses


def build_demo_model(recipe: DemoRecipe, out: Path) -> dict[str, Any]:
    """Train tokenizer and model from `recipe` and save them to `out` (atomically); returns the record."""
    torch.manual_seed(recipe.seed)
    start = time.perf_counter()
    console.notice("training the demo tokenizer on the standard library's sources…")
    tokenizer = train_tokenizer(recipe)
    train_windows = sample_windows(
        tokenizer, TRAIN_SOURCE, recipe.steps * recipe.batch_size, recipe.seq_len, seed=recipe.seed
    )
    model = _build_model(recipe, tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)  # how a matmul splits its sums decides its last bits
    try:
        losses = _train(model, train_windows, recipe)
        heldout = sequential_windows(tokenizer, HELDOUT_SOURCE, recipe.seq_len, max_tokens=recipe.eval_tokens)
        score = perplexity(model, heldout.input_ids)
    finally:
        torch.set_num_threads(threads)
    record = {
        "recipe": recipe.model_dump(),
        "key": recipe_key(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_data": train_windows.fingerprint.as_dict(),
        "heldout_data": heldout.fingerprint.as_dict(),
        "heldout_ppl": round(score.ppl, 4),
        "heldout_nll": round(score.mean_nll, 5),
        "vocab_size": len(tokenizer),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "losses": losses,
        "bf16_autocast": _use_bf16_autocast(recipe),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    if not math.isfinite(score.ppl):
        raise RuntimeError("demo model training diverged (non-finite held-out perplexity)")
    with staged_directory(out, force=True, marker=RECORD_NAME) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def demo_model_dir(fast: bool = False, recipe: DemoRecipe | None = None) -> Path:
    """Where the demo model is cached; it is complete when its record file is there.

    `recipe` replaces the standard one (tests train other seeds and autocast settings with it).
    """
    recipe = recipe or (FAST_RECIPE if fast else FULL_RECIPE)
    return cache_root() / "demo" / f"{'fast' if fast else 'full'}-{recipe_key(recipe)}"


def demo_model(
    fast: bool = False, rebuild: bool = False, recipe: DemoRecipe | None = None
) -> tuple[Path, dict[str, Any]]:
    """The cached demo model directory and its record, built first when missing."""
    recipe = recipe or (FAST_RECIPE if fast else FULL_RECIPE)
    path = demo_model_dir(fast, recipe)
    record_file = path / RECORD_NAME
    if rebuild or not record_file.is_file():
        build_demo_model(recipe, path)
    else:
        console.notice(f"using the cached demo model in {path}")
    return path, json.loads(record_file.read_text())
