"""Distillation: teacher generation, KD training, resume, multi-process, students, and bad inputs.

Quality claims are measured on the trained demo model: its 50%-MLP, 25%-heads pruned copy is the
student, the unpruned model the teacher.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_one_line_error

from compress.artifact import read_manifest
from compress.distill.dataset import load_generations
from compress.distill.losses import kl_full, kl_topk

QUICK = {"suite": "quick", "lr": 1e-3, "batch_size": 8}


def _evaluation(path: Path) -> dict:
    return read_manifest(path).extra["distillation"]["evaluation"]


# --- losses ----------------------------------------------------------------------------------------


def test_kl_is_zero_for_the_teacher_itself_and_topk_with_every_token_is_exact():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 7, 11), torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[1, 5:] = -100  # padding: excluded
    assert kl_full(teacher, teacher, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    stored = torch.log_softmax(teacher, dim=-1).topk(11, dim=-1)
    for temperature in (1.0, 2.0):
        full = kl_full(student, teacher, labels, temperature)
        sparse = kl_topk(student, stored.indices, stored.values, labels, temperature)
        assert sparse.item() == pytest.approx(full.item(), rel=1e-5)


def test_topk_kl_keeps_the_rest_of_the_vocabulary_as_one_outcome():
    """At T = 1 the offline loss is the KL of both distributions coarsened to the stored k tokens
    plus one bucket for the rest: exact, and below the full KL (coarsening loses information)."""
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 7, 50) * 2, torch.randn(2, 7, 50) * 2
    labels = torch.randint(0, 50, (2, 7))
    p, q = torch.log_softmax(teacher, -1)[:, :-1], torch.log_softmax(student, -1)[:, :-1]
    stored = torch.log_softmax(teacher, -1).topk(5, dim=-1)
    ids = stored.indices[:, :-1]
    p_top, q_top = p.gather(-1, ids).exp(), q.gather(-1, ids).exp()
    p_rest, q_rest = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    coarse = (p_top * (p_top / q_top).log()).sum(-1) + p_rest * (p_rest / q_rest).log()
    sparse = kl_topk(student, stored.indices, stored.values, labels, 1.0)
    assert sparse.item() == pytest.approx(coarse.mean().item(), rel=1e-4)
    assert sparse.item() < kl_full(student, teacher, labels, 1.0).item()


# --- generation ------------------------------------------------------------------------------------


def test_generation_writes_prompts_completions_and_topk(generations, demo):
    dataset, meta = load_generations(generations)
    assert meta["finished"] and len(dataset) == 96 == meta["completions"]
    row = dataset[0]
    assert row["input_ids"][: row["prompt_length"]] and row["prompt_length"] == 32
    assert len(row["input_ids"]) <= 32 + 64 and row["completion"]
    assert len(row["topk_ids"]) == len(row["input_ids"]) - 1 and len(row["topk_ids"][0]) == 16
    logprobs = torch.tensor(row["topk_logprobs"])
    assert (logprobs <= 0).all() and (logprobs[:, :-1] >= logprobs[:, 1:]).all()  # sorted log-probs
    assert len(list((generations / "shards").iterdir())) == 3


def test_interrupted_generation_resumes_to_the_same_dataset(generations, demo, tmp_path, capsys):
    from compress.distill.generate import generate

    copy = tmp_path / "generations"
    shutil.copytree(generations, copy)
    shutil.rmtree(copy / "shards" / "00001")  # as if killed while writing the second shard
    meta = json.loads((copy / "generation.json").read_text())
    (copy / "generation.json").write_text(json.dumps({**meta, "finished": False}))
    generate(demo[0], copy, samples=96, max_new_tokens=64, prompt_tokens=32, store_topk=16, shard_size=32)
    assert "resuming, 2 of 3 shards" in capsys.readouterr().err
    resumed, original = load_generations(copy)[0], load_generations(generations)[0]
    assert resumed["input_ids"] == original["input_ids"]


# --- training quality --------------------------------------------------------------------------------


@pytest.mark.quality
def test_kd_beats_plain_ce_on_the_same_tokens_and_lowers_kld(
    demo, pruned, generations, tmp_path, record_property
):
    from compress.distill.train import train

    runs = {
        loss: _evaluation(
            train(demo[0], str(pruned), tmp_path / loss, data=generations, loss=loss, steps=40, **QUICK)
        )
        for loss in ("kl", "ce")
    }
    kd, ce = runs["kl"], runs["ce"]
    record_property("evaluation", runs)
    assert kd["before"] == ce["before"]  # the same student to start with
    assert kd["after"]["kld_mean"] < 0.7 * kd["before"]["kld_mean"]
    assert kd["after"]["kld_mean"] < ce["after"]["kld_mean"]
    assert kd["after"]["ppl"] < ce["after"]["ppl"]
    assert kd["gap_recovered"] > 0.3


@pytest.mark.quality
def test_offline_topk_distillation_lowers_kld(demo, pruned, generations, tmp_path, record_property):
    from compress.distill.train import train

    out = train(
        demo[0],
        str(pruned),
        tmp_path / "offline",
        data=generations,
        teacher_logits="offline",
        steps=30,
        **QUICK,
    )
    evaluation = _evaluation(out)
    record_property("evaluation", evaluation)
    assert evaluation["after"]["kld_mean"] < 0.8 * evaluation["before"]["kld_mean"]
    assert read_manifest(out).parameters["teacher_logits"] == "offline"


# --- the CLI: both stages, config students ---------------------------------------------------------------


def test_distill_cli_runs_both_stages_and_reports(run_cli, demo, pruned, tmp_path):
    out = tmp_path / "healed"
    code, stdout, err = run_cli(
        "distill", "--teacher", demo[0], "--student", pruned, "--out", out, "--samples", "32",
        "--max-new-tokens", "32", "--prompt-tokens", "16", "--steps", "8", "--suite", "quick", "--lr", "1e-3",
    )  # fmt: skip
    assert code == 0, err
    assert "gap recovered" in stdout and "student after" in stdout
    report = read_manifest(out).extra["distillation"]
    assert report["steps"] == 8 and report["student"]["kind"] == "artifact"
    assert (tmp_path / "healed.work" / "generations" / "generation.json").is_file()  # kept for reuse
    assert not (tmp_path / "healed.work" / "checkpoints").exists()


def test_student_config_from_teacher_layers_and_widths(run_cli, demo, generations, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "small"
    code, _, err = run_cli(
        "distill", "train", "--teacher", demo[0],
        "--student-config", "num_hidden_layers=2,intermediate_size=172",
        "--data", generations, "--out", out, "--steps", "4", "--no-eval",
    )  # fmt: skip
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 172
    teacher = AutoModelForCausalLM.from_pretrained(demo[0])
    assert read_manifest(out).extra["distillation"]["student"] == {
        "kind": "config",
        "overrides": {"num_hidden_layers": 2, "intermediate_size": 172},
        "init": "teacher",
        "teacher": str(demo[0]),
    }
    # every k-th block of 3 keeping 2: blocks 0 and 2 (attention is untouched by the MLP cut; 4 steps
    # at lr 1e-4 move it by ~1e-3 at most)
    teacher_q = [block.self_attn.q_proj.weight for block in teacher.model.layers]
    student_q = [block.self_attn.q_proj.weight for block in model.model.layers]
    assert torch.allclose(student_q[0], teacher_q[0], atol=3e-3)
    assert torch.allclose(student_q[1], teacher_q[2], atol=3e-3)
    assert not torch.allclose(student_q[1], teacher_q[1], atol=3e-3)

    code, _, err = run_cli(
        "distill", "train", "--teacher", demo[0], "--student-config", "num_hidden_layers=2",
        "--student-init", "random", "--data", generations, "--out", tmp_path / "random",
        "--steps", "2", "--no-eval",
    )  # fmt: skip
    assert code == 0, err
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "random")
    assert fresh.config.num_hidden_layers == 2
    assert not torch.equal(
        fresh.model.layers[0].self_attn.q_proj.weight, teacher.model.layers[0].self_attn.q_proj.weight
    )


# --- resume and multi-process ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_accelerate_launch_two_cpu_processes(demo, pruned, generations, tmp_path):
    """DDP with the gloo backend on the CPU: the same artifact shape as one process, twice the batch."""
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "ddp"
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "compress", "distill", "train",
        "--teacher", str(demo[0]), "--student", str(pruned), "--data", str(generations), "--out", str(out),
        "--steps", "6", "--no-eval", "--device", "cpu",
    ]  # fmt: skip
    finished = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = read_manifest(out).extra["distillation"]
    assert report["world_size"] == 2 and report["steps"] == 6 and report["effective_batch"] == 16
    assert {"student", "teacher", "data", "history", "train_loss"} <= set(report)


# --- bad inputs ------------------------------------------------------------------------------------------


def test_student_with_another_tokenizer_is_refused(run_cli, demo, generations, tiny_model_dir, tmp_path):
    code, _, err = run_cli("distill", "train", "--teacher", demo[0], "--student", tiny_model_dir("llama"),
                           "--data", generations, "--out", tmp_path / "x")  # fmt: skip
    assert_one_line_error(code, err, "different tokenizer")


def test_empty_prompt_source_is_refused(run_cli, demo, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli(
        "distill", "generate", "--teacher", demo[0], "--prompts", empty, "--out", tmp_path / "g"
    )
    assert_one_line_error(code, err, "no prompts")
    assert not (tmp_path / "g" / "shards").exists()


def test_topk_larger_than_the_vocabulary_is_refused(run_cli, demo, tmp_path):
    code, _, err = run_cli(
        "distill", "generate", "--teacher", demo[0], "--store-topk", "5000", "--out", tmp_path / "g"
    )
    assert_one_line_error(code, err, "larger than the vocabulary")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--student-config", "layers=2"), "does not know 'layers'"),
        (("--student-config", "num_hidden_layers=two"), "key=integer"),
        (("--loss", "mse"), "loss"),
        (("--teacher-logits", "offline", "--no-eval"), "--store-topk"),
    ],
)
def test_bad_training_options_are_one_line_errors(run_cli, demo, pruned, tmp_path, argv, fragment):
    from compress.distill.generate import generate

    plain = generate(demo[0], tmp_path / "plain", samples=8, max_new_tokens=8, prompt_tokens=8)
    student = () if argv[0] == "--student-config" else ("--student", pruned)
    code, _, err = run_cli("distill", "train", "--teacher", demo[0], *student, "--data", plain,
                           "--out", tmp_path / "x", *argv)  # fmt: skip
    assert_one_line_error(code, err, fragment)


def test_vllm_engine_without_vllm_is_a_one_line_error(run_cli, demo, tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:
        code, _, err = run_cli("distill", "generate", "--teacher", demo[0], "--engine", "vllm",
                               "--samples", "2", "--out", tmp_path / "g")  # fmt: skip
        assert_one_line_error(code, err, "pip install 'compress[vllm]'")
        assert not (tmp_path / "g").exists()
    else:
        pytest.skip("vLLM is installed: the engine runs instead of failing")


def test_resume_skips_a_checkpoint_a_kill_left_half_written(tmp_path):
    from compress.distill.train import _last_checkpoint

    for step, complete in ((10, True), (20, True), (30, False)):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"")
        if complete:
            (directory / "trainer_state.json").write_text("{}")
    assert _last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-20"), ["checkpoint-30"])
    (tmp_path / "checkpoint-20" / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert _last_checkpoint(tmp_path) == (None, ["checkpoint-30", "checkpoint-20", "checkpoint-10"])
