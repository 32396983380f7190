"""lm-eval tasks on a loaded model: local task data, exact agreement with hand-computed scores, errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from compress.errors import CompressError
from compress.evaluate import tasks
from compress.evaluate.tasks import LOCAL_TASKS_DIR, check_task_names, local_task_names, recovery, run_tasks

LOCAL_TASKS = ["stdlib_heldout_rolling", "stdlib_next_line", "stories_cloze"]


@pytest.fixture(scope="module")
def demo_lm(demo):
    """The trained demo model and its tokenizer, loaded once for this module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = demo
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM convention: trailing context whitespace joins the continuation, and the
    continuation's tokens are those of the whole string past the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    return context_ids, tokenizer.encode(context + continuation)[len(context_ids) :]


@torch.inference_mode()
def loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Sum of the continuation tokens' log-probabilities, from one plain forward pass."""
    ids = torch.tensor([context_ids + continuation_ids])
    logprobs = model(ids[:, :-1]).logits.float().log_softmax(-1)[0, -len(continuation_ids) :]
    return logprobs.gather(1, ids[0, -len(continuation_ids) :, None]).sum().item()


def test_local_tasks_are_found_and_checked_without_indexing_lm_eval():
    tasks._default_manager.cache_clear()
    assert local_task_names() == LOCAL_TASKS
    check_task_names(LOCAL_TASKS)
    assert tasks._default_manager.cache_info().currsize == 0


def test_unknown_task_is_a_one_sentence_error():
    expected = f"unknown task 'no_such_task'; local tasks: {', '.join(LOCAL_TASKS)} (any lm-eval"
    with pytest.raises(CompressError, match=re.escape(expected)):
        check_task_names(["stdlib_next_line", "no_such_task"])


def test_task_whose_data_is_not_available_offline_is_a_compress_error(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "hub_only.yaml").write_text(
        "task: hub_only\ndataset_path: compress-tests/not-a-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: label\n"
    )
    monkeypatch.setattr(tasks, "LOCAL_TASKS_DIR", tmp_path)
    tasks._local_manager.cache_clear()
    try:
        path = tiny_model_dir("llama")
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        with pytest.raises(CompressError, match="cannot load the data of task 'hub_only'"):
            run_tasks(model, tokenizer, ["hub_only"])
    finally:
        tasks._local_manager.cache_clear()


def test_multiple_choice_accuracy_equals_the_hand_computed_one(demo_lm):
    model, tokenizer = demo_lm
    limit = 100
    lines = (LOCAL_TASKS_DIR / "stdlib_next_line.jsonl").read_text().splitlines()[:limit]
    correct = 0
    for doc in map(json.loads, lines):
        scores = [loglikelihood(model, *encode_pair(tokenizer, doc["context"], c)) for c in doc["choices"]]
        correct += max(range(len(scores)), key=scores.__getitem__) == doc["label"]

    result = run_tasks(model, tokenizer, ["stdlib_next_line"], limit=limit)["stdlib_next_line"]

    assert result["metric"] == "acc" and result["higher_is_better"] and result["samples"] == limit
    assert result["score"] == correct / limit
    assert result["score"] > 0.25  # chance, with four choices
    assert result["stderr"] is not None and result["stderr"] > 0


def test_rolling_task_gives_a_finite_perplexity_from_any_working_directory(demo_lm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the task's data path must not depend on the working directory
    model, tokenizer = demo_lm
    result = run_tasks(model, tokenizer, ["stdlib_heldout_rolling"], limit=10)["stdlib_heldout_rolling"]
    assert result["metric"] == "byte_perplexity" and not result["higher_is_better"]
    assert result["samples"] == 10
    assert math.isfinite(result["score"]) and result["score"] > 1


def test_tokenizer_without_pad_token_is_left_unchanged(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert tokenizer.pad_token is None
    result = run_tasks(model, tokenizer, ["stories_cloze"], batch_size=2, limit=4)["stories_cloze"]
    assert result["samples"] == 4 and 0 <= result["score"] <= 1
    assert tokenizer.pad_token is None


@pytest.mark.parametrize(
    ("artifact", "baseline", "higher_is_better", "expected"),
    [
        (0.45, 0.5, True, 0.9),  # accuracy: artifact ÷ baseline
        (0.5, 0.5, True, 1.0),
        (12.5, 10.0, False, 0.8),  # perplexity: baseline ÷ artifact, so worse is still below 1
        (8.0, 10.0, False, 1.25),
    ],
)
def test_recovery(artifact, baseline, higher_is_better, expected):
    assert recovery(artifact, baseline, higher_is_better) == pytest.approx(expected)


def test_recovery_is_none_when_the_denominator_is_zero():
    assert recovery(0.3, 0.0, higher_is_better=True) is None
    assert recovery(0.0, 5.0, higher_is_better=False) is None
