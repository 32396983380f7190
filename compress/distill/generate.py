"""`compress distill generate`: the teacher writes the student's training set.

The output is a directory of `datasets` shards (`shards/00000`, …) plus `generation.json`, which
records the request and says whether the run finished. Each shard is written under a temporary
name and renamed when complete, and draws its samples from its own seed, so a killed run resumes
at the first missing shard and produces exactly what an uninterrupted one would have.

Columns: `prompt`, `completion` (text), `input_ids` (prompt then completion), `prompt_length`,
`prompt_index`, `sample_index`, and with `store_topk` the teacher's `topk_ids`/`topk_logprobs` at
every position but the last (what position t predicts for t + 1), for offline distillation.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress import console
from compress.artifact import write_text_atomic
from compress.distill.config import GenerateConfig
from compress.distill.dataset import GENERATION_FILE, SHARDS_DIR, load_generations
from compress.distill.engines import CompletionEngine, check_engine, open_engine
from compress.distill.prompts import Prompts, load_prompts
from compress.errors import CompressError
from compress.modeling import (
    ModelSource,
    load_config,
    load_model,
    load_tokenizer,
    reject_quantized,
    resolve_model,
)
from compress.options import parse_options
from compress.ownership import check_output_dir, command_inputs
from compress.version import __version__

FORMAT = "compress-generations"


@dataclass(frozen=True)
class _Plan:
    """Which prompts and how many completions each shard holds."""

    prompts: Prompts
    samples: int
    per_prompt: int
    prompts_per_shard: int

    @property
    def shards(self) -> int:
        return math.ceil(len(self.prompts.ids) / self.prompts_per_shard)

    def shard_prompts(self, index: int) -> range:
        start = index * self.prompts_per_shard
        return range(start, min(start + self.prompts_per_shard, len(self.prompts.ids)))

    def samples_of(self, prompt_index: int) -> int:
        """Completions for a prompt: all prompts get `per_prompt`, the last one what is left."""
        return min(self.per_prompt, self.samples - prompt_index * self.per_prompt)


def _position_limit(source: ModelSource, config: GenerateConfig, trust_remote_code: bool) -> int | None:
    limit = getattr(load_config(source, trust_remote_code), "max_position_embeddings", None)
    if (
        limit is not None
        and config.prompt_tokens is not None
        and config.prompt_tokens + config.max_new_tokens > limit
    ):
        raise CompressError(
            f"--prompt-tokens {config.prompt_tokens} + --max-new-tokens {config.max_new_tokens} exceed the "
            f"teacher's {limit} positions"
        )
    return limit


def _check_topk(tokenizer, config: GenerateConfig) -> None:
    vocabulary = len(tokenizer)
    if config.store_topk > vocabulary:
        raise CompressError(
            f"--store-topk {config.store_topk} is larger than the vocabulary ({vocabulary} tokens)"
        )


def _plan(tokenizer, config: GenerateConfig, limit: int | None) -> _Plan:
    wanted = math.ceil(config.samples / config.samples_per_prompt)
    prompts = load_prompts(tokenizer, config.prompts, wanted, config.prompt_tokens, config.seed)
    if limit is not None:  # whole-document prompts: keep their ends, where the completion continues
        room = limit - config.max_new_tokens
        if room < 1:
            raise CompressError(
                f"--max-new-tokens {config.max_new_tokens} leaves no room in {limit} positions"
            )
        prompts = Prompts(prompts.source, [ids[-room:] for ids in prompts.ids], prompts.sha256)
    samples = min(config.samples, len(prompts.ids) * config.samples_per_prompt)
    if samples < config.samples:
        console.notice(
            f"prompt source '{config.prompts}' has {len(prompts.ids)} prompts: generating {samples} "
            f"completions, not {config.samples}"
        )
    per_shard = max(1, config.shard_size // config.samples_per_prompt)
    return _Plan(prompts, samples, config.samples_per_prompt, per_shard)


def _request(source: ModelSource, config: GenerateConfig, plan: _Plan) -> dict[str, Any]:
    """What decides the dataset's content: equal requests may resume each other's shards."""
    return {
        "config": config.model_dump(exclude={"device", "generate_batch_size", "engine"}),
        "teacher": {"reference": source.reference, "sha256": source.sha256},
        "prompts": {
            "source": plan.prompts.source,
            "count": len(plan.prompts.ids),
            "sha256": plan.prompts.sha256,
        },
        "samples": plan.samples,
        "shards": plan.shards,
    }


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / GENERATION_FILE).read_text())
    except (OSError, ValueError):
        return None


def _prepare_output(out: Path, request: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished metadata when `out` already holds this request; resumable state is kept."""
    meta = _read_meta(out)
    if meta is not None and meta.get("request") == request:  # same content: reuse or resume, even with force
        return meta if meta.get("finished") else None
    if out.exists() and any(out.iterdir()):
        if meta is None or meta.get("format") != FORMAT:  # not ours: never removed, even with --force
            raise CompressError(f"'{out}' holds other files; choose another directory for the generations")
        if not force:
            raise CompressError(f"'{out}' holds generations made with different parameters; pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / GENERATION_FILE, json.dumps({"format": FORMAT, "request": request, "finished": False})
    )
    return None


def _trim(completion: list[int], eos_ids: set[int]) -> list[int]:
    """A completion up to and including its first end-of-sequence token (the rest is padding)."""
    for position, token in enumerate(completion):
        if token in eos_ids:
            return completion[: position + 1]
    return completion


@torch.no_grad()
def teacher_topk(model, sequences: list[list[int]], k: int, batch_size: int) -> list[tuple[list, list]]:
    """Per sequence, the teacher's top-k token ids and log-probabilities at every position but the last."""
    device = next(model.parameters()).device
    rows: list[tuple[list, list]] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        values, indices = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
        for row, sequence in enumerate(batch):
            end = len(sequence) - 1
            rows.append((indices[row, :end].cpu().tolist(), values[row, :end].cpu().tolist()))
    return rows


def _features(with_topk: bool):
    from datasets import Features, Sequence, Value

    columns = {
        "prompt": Value("string"),
        "completion": Value("string"),
        "input_ids": Sequence(Value("int32")),
        "prompt_length": Value("int32"),
        "prompt_index": Value("int32"),
        "sample_index": Value("int32"),
    }
    if with_topk:
        columns["topk_ids"] = Sequence(Sequence(Value("int32")))
        columns["topk_logprobs"] = Sequence(Sequence(Value("float32")))
    return Features(columns)


def _shard_rows(
    engine: CompletionEngine, tokenizer, plan: _Plan, index: int, config: GenerateConfig, topk_model
) -> dict:
    prompt_indices = list(plan.shard_prompts(index))
    prompts = [plan.prompts.ids[i] for i in prompt_indices]
    completions = engine.complete(prompts, config, seed=config.seed * 1_000_003 + index)
    rows: dict[str, list] = {name: [] for name in _features(config.store_topk > 0)}
    for offset, prompt_index in enumerate(prompt_indices):
        for sample in range(plan.samples_of(prompt_index)):
            prompt = prompts[offset]
            completion = _trim(completions[offset * config.samples_per_prompt + sample], engine.eos_ids)
            rows["prompt"].append(tokenizer.decode(prompt))
            rows["completion"].append(tokenizer.decode(completion))
            rows["input_ids"].append(prompt + completion)
            rows["prompt_length"].append(len(prompt))
            rows["prompt_index"].append(prompt_index)
            rows["sample_index"].append(sample)
    if config.store_topk:
        topk = teacher_topk(topk_model, rows["input_ids"], config.store_topk, config.generate_batch_size)
        rows["topk_ids"] = [ids for ids, _ in topk]
        rows["topk_logprobs"] = [values for _, values in topk]
    return rows


def _write_shard(out: Path, index: int, rows: dict, with_topk: bool) -> None:
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # one bar for the whole generation, not one per shard write

    final = out / SHARDS_DIR / f"{index:05d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    Dataset.from_dict(rows, features=_features(with_topk)).save_to_disk(str(partial))
    partial.rename(final)


def generate(
    teacher: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    **options: Any,
) -> Path:
    """Generate teacher completions into `out` (resuming an interrupted run); returns `out`.

    `options` are the `GenerateConfig` fields (prompts, samples, max_new_tokens, store_topk, …).
    """
    config = parse_options(GenerateConfig, options, none_is_unset=False)
    check_engine(config)
    source = resolve_model(teacher)
    out = Path(out)
    check_output_dir(out, force=True, inputs=command_inputs(source, options=config), marker=GENERATION_FILE)
    reject_quantized(source, trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code)
    _check_topk(tokenizer, config)
    plan = _plan(tokenizer, config, _position_limit(source, config, trust_remote_code))
    request = _request(source, config, plan)
    created = [path for path in (out, *out.parents) if not path.exists()]
    try:
        return _generate_into(
            out, source, tokenizer, config, plan, request, force, trust_remote_code, command
        )
    except BaseException:
        # A run that fails before its first shard (a broken teacher, a bad prompt file) leaves
        # nothing behind; one that wrote shards keeps them, to resume.
        if created and not any((out / SHARDS_DIR).glob("[0-9]*")):
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def _generate_into(
    out: Path,
    source: ModelSource,
    tokenizer,
    config: GenerateConfig,
    plan: _Plan,
    request: dict[str, Any],
    force: bool,
    trust_remote_code: bool,
    command: str | None,
) -> Path:
    """`generate` once its request is checked: prepare (or resume) `out`, then write the shards."""
    if (finished := _prepare_output(out, request, force)) is not None:
        console.notice(
            f"{out}: these generations are complete already ({finished['completions']} completions)"
        )
        return out

    done = {p.name for p in (out / SHARDS_DIR).glob("[0-9]*") if not p.name.endswith(".partial")}
    todo = [index for index in range(plan.shards) if f"{index:05d}" not in done]
    if done:
        console.notice(f"{out}: resuming, {len(done)} of {plan.shards} shards already written")
    started = time.perf_counter()
    tokens = 0
    if todo:
        dtype = "auto" if config.device.startswith("cuda") else "float32"
        needs_hf_model = config.engine == "hf" or config.store_topk > 0
        model = (
            load_model(source, dtype, config.device, trust_remote_code, require_finite=True)
            if needs_hf_model
            else None
        )
        engine = open_engine(config, source, model, tokenizer, trust_remote_code)
        with console.progress() as bar:
            task = bar.add_task("teacher generation", total=len(todo), status="")
            for index in todo:
                rows = _shard_rows(engine, tokenizer, plan, index, config, model)
                _write_shard(out, index, rows, config.store_topk > 0)
                tokens += sum(
                    len(ids) - length
                    for ids, length in zip(rows["input_ids"], rows["prompt_length"], strict=True)
                )
                rate = tokens / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=1, status=f"{tokens:,} tokens · {rate:,.0f} tokens/s")
    wall = time.perf_counter() - started
    completions, total_tokens = _totals(out)
    meta = {
        "format": FORMAT,
        "request": request,
        "finished": True,
        "completions": completions,
        "tokens": total_tokens,
        "command": command,
        "tool_version": __version__,
        "wall_s": round(wall, 3),
        "generated_tokens_per_s": round(tokens / wall, 1) if wall > 0 and tokens else None,
    }
    write_text_atomic(out / GENERATION_FILE, json.dumps(meta, indent=2))
    return out


def _totals(out: Path) -> tuple[int, int]:
    dataset, _ = load_generations(out, require_finished=False)
    return len(dataset), sum(len(ids) for ids in dataset["input_ids"])
