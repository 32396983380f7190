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
from safetensors.torch import load_file, save_file

import compress
from compress.errors import CompressError
from compress.evaluate import harness
from compress.evaluate.compare import pareto_front
from compress.evaluate.divergence import DivergenceAccumulator, kl_divergence
from compress.evaluate.gates import LABEL, NUMBER, check_gate, check_gates, metric_schema, parse_gate
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.perplexity import perplexity
from compress.evaluate.speed import SpeedSettings
from compress.evaluate.suite import METRICS, Suite, load_suite
from compress.modeling import load_model, resolve_model
from compress.quantize import cast as quantize_cast

#: Small and offline: the held-out standard library, 8 windows of 256 tokens, no speed run.
FAST_METRICS = "ppl,kld,size,memory"
FAST_ARGS = ("--suite", "quick", "--metrics", FAST_METRICS, "--max-tokens", "2048")


def _suite(**changes) -> Suite:
    base = load_suite("quick").model_copy(update={"metrics": ["ppl", "kld"], "max_tokens": 2048})
    return base.model_copy(update=changes).check()


@pytest.fixture(scope="module")
def fp16_artifact(demo, tmp_path_factory):
    return compress.quantize(demo[0], tmp_path_factory.mktemp("eval") / "fp16", method="fp16", device="cpu")


@pytest.fixture(scope="module")
def tiny_artifact(tiny_model_dir, tmp_path_factory):
    """An fp16 artifact of the tiny random llama: results are stored in it, so they can be reused."""
    out = tmp_path_factory.mktemp("eval") / "tiny-fp16"
    return compress.quantize(tiny_model_dir("llama"), out, method="fp16", device="cpu")


def _forbid(monkeypatch, *names: str) -> None:
    """Make the harness's model work an error, so a check that comes too late fails the test."""
    for name in names:

        def refuse(*args, name=name, **kwargs):
            raise AssertionError(f"{name} ran before the input was refused")

        monkeypatch.setattr(harness, name, refuse)


#: Every step of the harness that loads, tokenizes or scores.
MODEL_WORK = ("resolve_model", "load_tokenizer", "sequential_windows", "load_for_eval", "score_pass")


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


def test_gate_paths_are_checked_against_the_keys_that_will_be_measured():
    everything = metric_schema(METRICS, ["a", "b"], [1, 8], priced=True)
    good = [
        "kld.mean<=0.05",
        "ppl<=12",  # `ppl` reads `ppl.value`
        "ppl.increase_pct<=5",
        "same_top1>=0.9",
        "tasks.*.recovery>=0.97",
        "tasks.a.score>=0.5",
        "speed.decode_tok_s.8>100",
        "speed.vs_baseline.decode_1>=1",
        "speed.latency_ms.*<=50",
        "cost.usd_per_1m_tokens<=1",
        "memory.peak_rss_bytes<=1e9",
        "size.bits_per_weight<=4.5",
    ]
    assert len(check_gates(good, everything)) == len(good)
    bad = {
        "kld.meen<=0.1": ["'kld' has no key 'meen'", "did you mean 'mean'", "available: mean, median, p99"],
        "tasks.c.recovery>=0.9": ["task 'c' is not among the requested tasks", "requested: a, b"],
        "tasks.*.recovry>=0.9": ["'tasks.a' has no key 'recovry'", "did you mean 'recovery'"],
        "tasks.a*.recovery>=0.9": ["'*' stands for a whole key", "'a*'"],
        "speed.decode_tok_s.16>1": ["'speed.decode_tok_s' has no key '16'", "available: 1, 8"],
        "speed.*<=1": ["'speed.device' is a label, not a number"],
        "tasks.a.metric>=1": ["'tasks.a.metric' is a label"],
        "kld<=0.1": ["'kld' holds several values", "mean, median"],
        "same_top1.mean>=0.9": ["'same_top1' is a single value with no key 'mean'"],
        "kld..mean<=0.1": ["empty key"],
    }
    for expression, fragments in bad.items():
        with pytest.raises(CompressError) as caught:
            check_gates([expression], everything)
        for fragment in fragments:
            assert fragment in str(caught.value), (expression, str(caught.value))

    only_ppl = metric_schema(["ppl"], [], [1, 8])
    for expression, fragment in {
        "kld.mean<=0.1": "metric 'kld' is not measured (metrics: ppl)",
        "same_top1>=0.9": "metric 'kld' (which gives same_top1) is not measured",
        "speed.ttft_ms<=5": "metric 'speed' is not measured",
    }.items():
        with pytest.raises(CompressError, match=r"not measured") as caught:
            check_gates([expression], only_ppl)
        assert fragment in str(caught.value)
    with pytest.raises(CompressError, match="no lm-eval tasks are requested"):
        check_gates(["tasks.*.recovery>=0.9"], metric_schema(["tasks"], [], [1]))
    with pytest.raises(CompressError, match="needs the speed metric and a price"):
        check_gates(["cost.usd_per_1m_tokens<=1"], metric_schema(["speed", "cost"], [], [1]))
    assert check_gates(["ppl.value<=20"], metric_schema(["kld"], [], [1]))  # the KLD pass scores ppl too


def _kinds_of(metrics: dict) -> dict:
    """A result's metrics as a schema: NUMBER for numbers (and None: not measurable here), LABEL else."""
    return {
        key: _kinds_of(value)
        if isinstance(value, dict)
        else NUMBER
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        else LABEL
        for key, value in metrics.items()
    }


def test_the_harness_writes_exactly_the_declared_metric_keys(tiny_model_dir):
    """The gate schema is the producers' contract: every metric, every task and batch size on."""
    model = str(tiny_model_dir("llama"))
    speed = SpeedSettings(prompt_tokens=8, new_tokens=2, batch_sizes=[1, 2], warmup=0, repeats=1)
    suite = load_suite("quick").model_copy(
        update={
            "metrics": list(METRICS),
            "tasks": ["stdlib_next_line"],
            "task_limit": 2,
            "max_tokens": 512,
            "speed": speed,
        }
    )
    request = EvalRequest([model], suite.check(), baseline=model, price_per_hour=2.0, reuse=False)
    report, problems = evaluate(request)
    assert not problems
    declared = suite.gate_schema(priced=True).tree
    assert _kinds_of(report.results[0].metrics) == declared
    assert set(METRICS) <= set(declared) | {"kld"}  # one entry per metric, kld's three roots included


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


def test_bad_gates_metrics_tasks_price_and_device_are_refused_before_any_work(
    run_cli, tiny_model_dir, tmp_path, monkeypatch
):
    model = tiny_model_dir("llama")
    gated_suite, no_metrics = tmp_path / "gated.yaml", tmp_path / "none.yaml"
    gated_suite.write_text("metrics: [ppl, kld]\ngates: ['kld.mean<=0.1']\n")
    no_metrics.write_text("metrics: []\n")
    _forbid(monkeypatch, *MODEL_WORK)
    cases = [
        (("--gate", "kld.meen<=0.1"), ["'kld' has no key 'meen'", "did you mean 'mean'", "median"]),
        (("--metrics", "ppl", "--gate", "kld.mean<=0.1"), ["metric 'kld' is not measured (metrics: ppl)"]),
        (("--metrics", "ppl", "--gate", "same_top1>=0.9"), ["which gives same_top1"]),
        (("--suite", "quick", "--gate", "tasks.hella.recovery>=0.9"), ["task 'hella'", "stdlib_next_line"]),
        (("--suite", "quick", "--gate", "tasks.*.recovry>=0.9"), ["has no key 'recovry'", "'recovery'"]),
        (("--gate", "tasks.*.recovery>=0.9"), ["no lm-eval tasks are requested"]),
        (("--gate", "cost.usd_per_1m_tokens<=1"), ["needs the speed metric and a price per hour"]),
        (("--gate", "speed.decode_tok_s.4>1"), ["'speed.decode_tok_s' has no key '4'", "available: 1, 8"]),
        (("--gate", "speed.device>=1"), ["'speed.device' is a label"]),
        (("--gate", "kld<=0.1"), ["'kld' holds several values"]),
        (("--suite", gated_suite, "--metrics", "ppl"), ["gate 'kld.mean<=0.1'", "not measured"]),
        (("--suite", no_metrics), ["no metrics to measure"]),
        (("--metrics", ""), ["--metrics is empty"]),
        (("--metrics", " , "), ["--metrics is empty"]),
        (("--tasks", ""), ["--tasks is empty"]),
        (("--metrics", "ppl", "--tasks", "stdlib_next_line"), ["--tasks is given", "metrics: ppl"]),
        (("--metrics", "ppl,tasks"), ["no task is named", "--tasks"]),
        (("--price-per-hour", "-1"), ["--price-per-hour must be a positive number"]),
        (("--price-per-hour", "nan"), ["--price-per-hour must be a positive number"]),
        (("--metrics", "ppl", "--price-per-hour", "2"), ["prices the cost metric", "metrics: ppl"]),
        (("--device", "tpu"), ["unknown device 'tpu'"]),
        (("--device", "mps"), ["device 'mps' is not available"]),
    ]  # fmt: skip
    for options, fragments in cases:
        code, _, err = run_cli("eval", model, "--baseline", model, *options)
        assert_one_line_error(code, err, *fragments)


def test_the_device_is_checked_before_cached_results_are_reused(
    run_cli, tiny_artifact, tiny_model_dir, monkeypatch
):
    baseline = tiny_model_dir("llama")
    args = ("eval", tiny_artifact, "--baseline", baseline, "--suite", "quick", "--metrics", "ppl",
            "--max-tokens", "512")  # fmt: skip
    assert run_cli(*args)[0] == 0
    code, _, err = run_cli(*args)
    assert code == 0 and "reusing eval.json" in err and "baseline: reusing cached scores" in err
    _forbid(monkeypatch, *MODEL_WORK)
    code, _, err = run_cli(*args, "--device", "tpu")
    assert_one_line_error(code, err, "unknown device 'tpu'")
    if not torch.cuda.is_available():
        code, _, err = run_cli(*args, "--device", "cuda")
        assert_one_line_error(code, err, "CUDA is not available")


def _poisoned(model, target, name: str, value: float):
    shutil.copytree(model, target)
    weights = load_file(target / "model.safetensors")
    weights[name][0, 0] = value
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_nan_or_inf_weights_are_refused_before_scoring_and_scanned_only_when_scored(
    run_cli, tiny_model_dir, tiny_artifact, tmp_path, monkeypatch
):
    model = tiny_model_dir("llama")
    nan = _poisoned(model, tmp_path / "nan", "model.layers.0.mlp.down_proj.weight", float("nan"))
    inf = _poisoned(model, tmp_path / "inf", "model.layers.1.self_attn.o_proj.weight", float("inf"))
    quick = ("--suite", "quick", "--metrics", "ppl,kld", "--max-tokens", "512")
    scans: list[str] = []
    original = quantize_cast.check_finite_files
    monkeypatch.setattr(quantize_cast, "check_finite_files", lambda d: scans.append(d) or original(d))

    with monkeypatch.context() as scoring:
        _forbid(scoring, "load_for_eval", "score_pass", "write_baseline_store")
        code, _, err = run_cli("eval", nan, "--baseline", model, *quick)
        assert_one_line_error(
            code, err, f"cannot score '{nan}'", "'model.layers.0.mlp.down_proj.weight'", "NaN"
        )
        code, _, err = run_cli("eval", model, "--baseline", inf, *quick, "--no-cache")
        assert_one_line_error(
            code, err, f"'{inf}'", "'model.layers.1.self_attn.o_proj.weight' has NaN or Inf"
        )

    scans.clear()
    assert run_cli("eval", tiny_artifact, "--baseline", model, *quick, "--no-cache")[0] == 0
    assert sorted(map(str, scans)) == sorted([str(tiny_artifact), str(model)])  # both scored: both scanned
    scans.clear()
    code, _, err = run_cli("eval", tiny_artifact, "--baseline", model, *quick)
    assert code == 0 and "reusing eval.json" in err
    assert scans == []  # unchanged weights with cached results: nothing read


def test_compare_refuses_malformed_result_files(run_cli, tmp_path):
    cases = {
        "list.json": ("[1, 2]", "neither an eval report"),
        "empty.json": ('{"entries": {}}', "holds no results"),
        "no-result.json": ('{"entries": {"k": {"baseline": null}}}', "missing key 'result'"),
        "bad-report.json": ('{"results": [{"name": "x"}]}', "not a valid eval report (suite: Field required"),
        "bad-baseline.json": ('{"suite": "s", "suite_sha256": "0", "baseline": 3}', "baseline"),
    }
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = run_cli("compare", tmp_path / name)
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


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_scoring_by_position_slices_equals_scoring_whole_batches(
    family, tiny_model_dir, tmp_path, monkeypatch
):
    """Large vocabularies are scored a slice of positions at a time (the model's body runs once,
    its head and logit processing per slice: Gemma 2's soft-capping included); the NLL, the
    baseline store and the divergence are those of whole batches, to float rounding."""
    from compress.evaluate import scoring
    from compress.evaluate.suite import StoreLayout

    baseline = load_model(resolve_model(tiny_model_dir(family)), "float32", "cpu")
    artifact = load_model(resolve_model(tiny_model_dir(family)), "float32", "cpu")
    with torch.no_grad():
        for parameter in artifact.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.01)
    ids = torch.randint(0, 300, (5, 48), generator=torch.Generator().manual_seed(0))
    layout = StoreLayout(topk=16, tail_samples=8, storage_dtype="float16")

    def score(chunk_bytes: int, name: str):
        monkeypatch.setattr(scoring, "LOG_PROB_CHUNK_BYTES", chunk_bytes)
        written = scoring.write_baseline_store(baseline, ids, 2, tmp_path / name, layout, {})
        scored = scoring.score_pass(artifact, ids, 2, scoring.BaselineStore(tmp_path / name))
        return written.window_nll, scored.window_nll, scored.divergence.summary()

    whole, sliced = score(2**30, "whole"), score(2 * 4 * 300 * 5, "sliced")  # 5 positions a slice
    torch.testing.assert_close(sliced[0], whole[0], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(sliced[1], whole[1], rtol=1e-6, atol=1e-4)
    assert sliced[2]["kld"]["mean"] == pytest.approx(whole[2]["kld"]["mean"], rel=1e-4)
    assert sliced[2]["same_top1"] == whole[2]["same_top1"]


def test_speed_reports_the_output_heads_share_of_a_decode_step(tiny_model_dir):
    from compress.evaluate.speed import measure_speed

    model = load_model(resolve_model(tiny_model_dir("llama")), "float32", "cpu")
    settings = SpeedSettings(prompt_tokens=8, new_tokens=4, batch_sizes=[1], warmup=0, repeats=1)
    share = measure_speed(model, settings)["head_share_pct"]["1"]
    assert 0 < share < 100
