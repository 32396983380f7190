"""The eval harness: exact metrics, baseline caching, gates, reports, compare, and its errors."""

from __future__ import annotations

import json
import math
import shutil
from xml.etree import ElementTree

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error

import compress
from compress.errors import CompressError
from compress.evaluate.compare import pareto_front
from compress.evaluate.divergence import DivergenceAccumulator, kl_divergence
from compress.evaluate.gates import check_gate, parse_gate
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.perplexity import perplexity
from compress.evaluate.suite import Suite, load_suite
from compress.modeling import load_model, resolve_model

#: Small and offline: the held-out standard library, 8 windows of 256 tokens, no speed run.
FAST_METRICS = "ppl,kld,size,memory"
FAST_ARGS = ("--suite", "quick", "--metrics", FAST_METRICS, "--max-tokens", "2048")


def _suite(**changes) -> Suite:
    base = load_suite("quick").model_copy(update={"metrics": ["ppl", "kld"], "max_tokens": 2048})
    return base.model_copy(update=changes).check()


@pytest.fixture(scope="module")
def fp16_artifact(demo, tmp_path_factory):
    return compress.quantize(demo[0], tmp_path_factory.mktemp("eval") / "fp16", method="fp16", device="cpu")


# --- exactness -----------------------------------------------------------------------------------


def test_ppl_equals_a_naive_per_token_reference(tiny_model_dir):
    model = load_model(resolve_model(tiny_model_dir("llama")), dtype="float32", device="cpu")
    windows = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    total, count = 0.0, 0
    with torch.inference_mode():
        for window in windows:
            for t in range(1, window.numel()):  # score token t from the prefix alone
                logits = model(input_ids=window[:t].unsqueeze(0)).logits[0, -1].double()
                total -= torch.log_softmax(logits, -1)[window[t]].item()
                count += 1
    result = perplexity(model, windows, batch_size=2)
    assert result.tokens == count == 33
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_kld_matches_torch_kl_div_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    base = F.log_softmax(torch.randn(64, 500, generator=generator) * 3, -1)
    other = F.log_softmax(torch.randn(64, 500, generator=generator) * 3, -1)
    reference = F.kl_div(other, base, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_divergence(base, other), reference, atol=1e-6)
    assert kl_divergence(base, base).abs().max() == 0


def test_divergence_summary_on_a_hand_made_case():
    base = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    other = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]))
    accumulator = DivergenceAccumulator()
    accumulator.add(base, other, targets=torch.tensor([0, 1]))
    summary = accumulator.summary()
    expected_kld = [
        0.7 * math.log(0.7 / 0.6) + 0.2 * math.log(0.2 / 0.3),
        0.1 * math.log(0.1 / 0.5) + 0.8 * math.log(2),
    ]
    assert summary["kld"]["mean"] == pytest.approx(sum(expected_kld) / 2, rel=1e-5)
    assert summary["kld"]["max"] == pytest.approx(max(expected_kld), rel=1e-5)
    assert summary["same_top1"] == 0.5
    assert summary["delta_p"]["mean"] == pytest.approx(((0.6 - 0.7) + (0.4 - 0.8)) / 2, rel=1e-5)


def test_model_against_itself_has_zero_kld(demo):
    report, problems = evaluate(EvalRequest([str(demo[0])], _suite(), baseline=str(demo[0])))
    metrics = report.results[0].metrics
    assert not problems
    assert metrics["kld"]["mean"] == 0 and metrics["kld"]["max"] == 0
    assert metrics["same_top1"] == 1.0
    assert metrics["delta_p"]["mean"] == 0
    assert metrics["ppl"]["value"] == report.baseline.metrics["ppl"]["value"]
    assert metrics["ppl"]["increase_pct"] == 0


# --- gates ---------------------------------------------------------------------------------------


def test_gate_parsing_and_checking():
    metrics = {
        "kld": {"mean": 0.02},
        "same_top1": 0.95,
        "ppl": {"increase_pct": 7.5},
        "tasks": {"a": {"recovery": 0.99}, "b": {"recovery": 0.90}},
    }
    assert check_gate(parse_gate("kld.mean<=0.05"), metrics).passed
    assert check_gate(parse_gate("same_top1 >= 0.9"), metrics).passed
    outcome = check_gate(parse_gate("ppl.increase_pct<=5"), metrics)
    assert not outcome.passed and "ppl.increase_pct=7.5" in outcome.message
    wildcard = check_gate(parse_gate("tasks.*.recovery>=0.97"), metrics)
    assert not wildcard.passed and wildcard.values == {"tasks.a.recovery": 0.99, "tasks.b.recovery": 0.90}
    assert not check_gate(parse_gate("kld.p99<=1"), metrics).passed  # not measured fails
    assert parse_gate("speed.decode_tok_s.1>1e2").threshold == 100.0
    for bad in ("kld.mean<=", "kld.mean=<0.05", "kld.mean<=abc", "<=0.05", "bogus.mean<=1"):
        with pytest.raises(CompressError):
            parse_gate(bad)


# --- the command line, end to end ----------------------------------------------------------------


def test_eval_then_compare(run_cli, demo, fp16_artifact, tmp_path):
    report_file, junit_file = tmp_path / "r.json", tmp_path / "r.xml"
    code, _, err = run_cli(
        "-q", "eval", fp16_artifact, "--baseline", demo[0], *FAST_ARGS, "--json", report_file,
        "--junit", junit_file, "--gate", "kld.mean<=0.001", "--gate", "same_top1>=0.99",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert report["schema_version"] == 1 and report["baseline"]["role"] == "baseline"
    assert report["results"][0]["metrics"]["size"]["bits_per_weight"] == 16.0

    code, out, _ = run_cli("compare", report_file, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["role"] for r in rows] == ["baseline", "artifact"]
    assert rows[1]["smaller_x"] == pytest.approx(2.0, rel=0.02)
    assert rows[1]["kld_mean"] < 1e-4 and rows[1]["same_top1"] > 0.99
    code, out, _ = run_cli("compare", report_file)
    assert code == 0 and "÷2.00" in out and "fp16" in out

    cases = ElementTree.fromstring(junit_file.read_text())
    assert cases.get("tests") == "3" and cases.get("failures") == "0"

    code, out, _ = run_cli("compare", fp16_artifact, "--format", "csv", "--plot", tmp_path / "plot.png")
    assert code == 0 and out.splitlines()[0].startswith("name,role,method")
    assert len(out.strip().splitlines()) == 3  # header, baseline (stored in eval.json), artifact
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "## Results" in (fp16_artifact / "README.md").read_text()
    assert "KLD mean" in (fp16_artifact / "README.md").read_text()


def test_unchanged_artifact_is_not_re_evaluated(run_cli, demo, fp16_artifact, tmp_path):
    args = ("-q", "eval", fp16_artifact, "--baseline", demo[0], *FAST_ARGS)
    assert run_cli(*args, "--json", tmp_path / "a.json")[0] == 0
    assert run_cli(*args, "--json", tmp_path / "b.json")[0] == 0
    first, second = (json.loads((tmp_path / f"{n}.json").read_text())["results"][0] for n in "ab")
    assert first["created"] == second["created"] and first["metrics"] == second["metrics"]
    stored = json.loads((fp16_artifact / "eval.json").read_text())
    assert stored["schema_version"] == 1 and len(stored["entries"]) == 1


def test_failing_gate_exits_1_and_is_named(run_cli, demo, fp16_artifact, tmp_path):
    code, out, _ = run_cli(
        "-q", "eval", fp16_artifact, "--baseline", demo[0], *FAST_ARGS, "--gate", "ppl<=1.0",
        "--junit", tmp_path / "j.xml",
    )  # fmt: skip
    assert code == 1
    assert "FAIL: ppl<=1.0" in out
    junit = ElementTree.fromstring((tmp_path / "j.xml").read_text())
    assert junit.get("failures") == "1" and junit.find(".//failure") is not None


def test_bad_eval_inputs_are_one_line_errors(run_cli, demo, fp16_artifact, tmp_path):
    (tmp_path / "short.txt").write_text("x = 1")
    broken = tmp_path / "broken"
    shutil.copytree(fp16_artifact, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    base = ("--baseline", demo[0], "--suite", "quick")
    short = tmp_path / "short.txt"
    cases = [
        (("eval", fp16_artifact, *base, "--metrics", "ppl,vibes"), "unknown metric 'vibes'"),
        (("eval", fp16_artifact, *base, "--gate", "kld.mean<<0.1"), "does not parse"),
        (("eval", fp16_artifact, *base, "--gate", "accuracy>=0.5"), "unknown metric 'accuracy'"),
        (("eval", fp16_artifact, *base, "--metrics", "ppl", "--data", short), "fewer than one window"),
        (("eval", broken, *base, "--metrics", "ppl"), "truncated or corrupt"),
        (("eval", fp16_artifact, *base, "--suite", "nonexistent"), "suite 'nonexistent' not found"),
        (("eval", fp16_artifact, *base, "--tasks", "no_such_task"), "unknown task 'no_such_task'"),
        (("compare", tmp_path / "nothing.json"), "does not exist"),
        (("compare", tmp_path, "--format", "pdf"), "unknown format 'pdf'"),
    ]  # fmt: skip
    for argv, fragment in cases:
        code, _, err = run_cli("-q", *argv)
        assert_one_line_error(code, err, fragment)


def test_tokenizer_mismatch_skips_kld_but_scores_ppl(run_cli, demo, tiny_model_dir, tmp_path):
    code, _, err = run_cli(
        "-q",
        "eval",
        tiny_model_dir("llama"),
        "--baseline",
        demo[0],
        *FAST_ARGS,
        "--json",
        tmp_path / "r.json",
    )
    assert_one_line_error(code, err, "kld skipped", "tokenizer differs")
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert "tokenizer differs" in result["skipped"]["kld"]
    assert result["metrics"]["ppl"]["value"] > 0 and "kld" not in result["metrics"]


def test_pareto_front():
    # (size, kld): the middle point is beaten on both axes by the first.
    assert pareto_front([(1.0, 0.1), (2.0, 0.2), (3.0, 0.01), (0.5, 0.5)]) == [0, 2, 3]
    assert pareto_front([(10.0, 0.1), (20.0, 0.2)], maximize_x=True) == [0, 1]
