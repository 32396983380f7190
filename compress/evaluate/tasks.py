"""lm-eval tasks on a model already in memory: the local tasks in `evals/tasks/`, or any lm-eval task.

lm-eval's own API does the work (its `HFLM` wraps the model we hold, so nothing is loaded twice), so
a score here is the score `lm_eval` itself reports for the same model, task and limit. The local
tasks need no network; any other lm-eval task name works when its dataset can be downloaded or is
already in the Hugging Face cache. Indexing lm-eval's ~15,000 bundled task names takes seconds, so it
happens only when a requested name is not a local task.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import console
from compress.errors import CompressError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOCAL_TASKS_DIR = Path(__file__).resolve().parents[2] / "evals" / "tasks"
SEED = 1234
# Means (accuracies) get their closed-form standard error from any positive value; metrics that need
# a bootstrap (median, F1, …) get 100 draws, enough for an error bar and quick. lm-eval's default,
# 100,000, takes minutes.
BOOTSTRAP_ITERS = 100


@lru_cache(maxsize=1)
def _local_manager() -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=False)


@lru_cache(maxsize=1)
def _default_manager() -> TaskManager:
    """lm-eval's bundled tasks plus ours (ours win a name clash); built once, it takes seconds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=True)


def local_task_names() -> list[str]:
    """Names of the tasks (and any groups or tags) defined in `evals/tasks/`."""
    return sorted(_local_manager().all_tasks)


def check_task_names(names: list[str]) -> None:
    """Refuse a name that is neither a local task nor one lm-eval knows, before any model work."""
    local = local_task_names()
    others = [name for name in names if name not in local]
    if not others:
        return
    known = set(_default_manager().all_tasks)
    for name in others:
        if name not in known:
            raise CompressError(
                f"unknown task '{name}'; local tasks: {', '.join(local)} "
                "(any lm-eval task name works when online)"
            )


def _load_tasks(names: list[str]) -> list[Any]:
    """One lm-eval Task or Group per name (a tag gives its tasks); datasets are read here.

    Loading before `simple_evaluate` (which accepts loaded tasks) names the task whose data is
    missing, and keeps data errors apart from errors in the evaluation itself.
    """
    local = local_task_names()
    loaded: list[Any] = []
    for name in names:
        manager = _local_manager() if name in local else _default_manager()
        try:
            built = manager.load([name])
        except OSError as exc:  # ConnectionError offline, FileNotFoundError, DatasetNotFoundError
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CompressError(
                f"cannot load the data of task '{name}' ({reason}); data from the Hugging Face Hub "
                f"needs one online run to be cached, or use a local task: {', '.join(local)}"
            ) from exc
        if name in built["groups"]:
            loaded.append(built["groups"][name])
        elif name in built["tasks"]:
            loaded.append(built["tasks"][name])
        else:
            loaded.extend(built["tasks"].values())
    return loaded


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """HFLM sets a missing pad token on the tokenizer it gets; give it a copy to keep the caller's as is."""
    return tokenizer if tokenizer.pad_token_id is not None else copy.deepcopy(tokenizer)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """Silence lm-eval's log lines, keep its prints off our stdout, and its bars out of --quiet/--json.

    Its warnings are addressed to users of its own CLI (a model object was passed in, `limit` is for
    testing, default aggregations were filled in). Its bootstrap prints to stdout, which must stay
    clean for `--json`. Its tqdm bars are progress, so they stay on stderr unless output is quiet.
    """
    logger = logging.getLogger("lm_eval")
    with ExitStack() as stack:
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
        if console.mode.quiet or console.mode.json:
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(redirect_stdout(devnull))
            stack.enter_context(redirect_stderr(devnull))
        else:
            stack.enter_context(redirect_stdout(sys.stderr))
        yield


def _summary(row: dict[str, Any], higher_is_better: dict[str, bool]) -> dict[str, Any] | None:
    """The main metric of one result row: the first metric the task lists; None for a row without one."""
    for metric, better in higher_is_better.items():
        for key, value in row.items():
            if key.startswith(f"{metric},") and isinstance(value, (int, float)):
                filter_name = key.split(",", 1)[1]
                stderr = row.get(f"{metric}_stderr,{filter_name}")
                return {
                    "metric": metric,
                    "score": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "higher_is_better": bool(better),
                    "samples": int(row.get("sample_len", 0)),
                }
    return None


def run_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    names: list[str],
    batch_size: int = 8,
    limit: int | None = None,
    device: str | None = None,
) -> dict[str, dict]:
    """Score `model` on lm-eval tasks: {task: {metric, score, stderr, higher_is_better, samples}}.

    The model runs where it is; a `device` moves it there first. `limit` takes each task's first
    `limit` documents (lm-eval's convention), so a baseline and an artifact see the same ones.
    Groups requested by name report their aggregate row and a row per subtask.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    check_task_names(names)
    if device is not None:
        model.to(device)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with _quiet_lm_eval():
        tasks = _load_tasks(names)
        lm = HFLM(pretrained=model, tokenizer=_with_pad_token(tokenizer), batch_size=batch_size)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=_local_manager(),  # the tasks are loaded; it only collects them
            limit=limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=False,
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
        )
    summaries = {
        name: _summary(row, results["higher_is_better"].get(name, {}))
        for name, row in results["results"].items()
    }
    return {name: summary for name, summary in summaries.items() if summary is not None}


def recovery(artifact_score: float, baseline_score: float, higher_is_better: bool) -> float | None:
    """How much of the baseline's quality the artifact keeps: 1.0 = no loss, below 1 = worse.

    artifact ÷ baseline for scores where higher is better (accuracy); baseline ÷ artifact where lower
    is better (perplexity), so the direction reads the same. None when the denominator is 0.
    """
    numerator, denominator = (
        (artifact_score, baseline_score) if higher_is_better else (baseline_score, artifact_score)
    )
    return None if denominator == 0 else numerator / denominator
