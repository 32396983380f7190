"""`compress prune`: importance on the trained demo model, the plan, the artifact, and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error
from transformers import AutoConfig, AutoModelForCausalLM

import compress
from compress.artifact import read_manifest
from compress.data import sequential_windows
from compress.errors import CompressError
from compress.evaluate.divergence import kl_divergence
from compress.modeling import count_parameters, load_model, load_tokenizer, resolve_model
from compress.prune.geometry import config_geometry

CALIBRATION = "builtin:python-stdlib:train"
HELDOUT = "builtin:python-stdlib:heldout"


@pytest.fixture(scope="module")
def heldout(demo):
    source = resolve_model(demo[0])
    windows = sequential_windows(load_tokenizer(source), HELDOUT, seq_len=256, max_tokens=16 * 256).input_ids
    return windows, _log_probs(load_model(source, dtype="float32", device="cpu"), windows)


def _log_probs(model, windows) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=windows).logits[:, :-1].float()
    return F.log_softmax(logits, -1).reshape(-1, logits.shape[-1])


def _kld(path, heldout) -> float:
    windows, baseline = heldout
    pruned = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return kl_divergence(baseline, _log_probs(pruned, windows)).mean().item()


RANDOM_SEEDS = (0, 1, 2, 3)


@pytest.mark.quality
@pytest.mark.slow
@pytest.mark.parametrize("target", [{"mlp": 0.3}, {"heads": 0.5}])
def test_activation_importance_beats_random(demo, heldout, tmp_path, target, record_property):
    """Against the mean of several random choices, with a 5% margin: one random draw can be lucky.

    Heads at 50% (two of four KV groups, six choices), not 25% (four choices, where one lucky
    random draw beat the activation choice on another machine). `make test-quality-matrix`
    measured activation/random KLD at most 0.82 (heads) and 0.05 (MLP) over three demo seeds with
    bf16 autocast on and off.
    """

    def kld(importance: str, seed: int) -> float:
        out = compress.prune(
            demo[0], tmp_path / f"{importance}-{seed}", importance=importance, calib=CALIBRATION,
            calib_samples=16, seq_len=256, seed=seed, device="cpu", **target,
        )  # fmt: skip
        return _kld(out, heldout)

    activation = kld("activation", 0)
    random_mean = sum(kld("random", seed) for seed in RANDOM_SEEDS) / len(RANDOM_SEEDS)
    record_property("kld", {"activation": activation, "random mean": random_mean})
    assert activation < 0.95 * random_mean, {"activation": activation, "random mean": random_mean}


@pytest.mark.slow
def test_pruned_artifact_matches_plan_loads_and_generates(demo, run_cli, tmp_path):
    options = ["--heads", "0.25", "--mlp", "0.3", "--hidden", "0.2", "--layers", "1"]
    code, out, _ = run_cli("--json", "prune", demo[0], *options, "--dry-run")
    assert code == 0
    plan = json.loads(out)
    assert plan["after"]["num_heads"] == 6 and plan["after"]["num_kv_heads"] == 3
    assert plan["after"]["num_layers"] == plan["before"]["num_layers"] - 1
    assert plan["after"]["hidden_size"] % plan["after"]["num_heads"] == 0  # LlamaConfig's own check
    code, _, err = run_cli("prune", demo[0], *options, "--calib", CALIBRATION, "--calib-samples", "8",
                           "-o", tmp_path / "pruned")  # fmt: skip
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert count_parameters(model) == plan["parameters_after"]
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)
    report = read_manifest(tmp_path / "pruned").extra["pruning"]
    assert report["parameters_after"] == plan["parameters_after"]
    assert len(report["removed"]["layers"]) == 1 and len(report["removed"]["hidden"]) == 192 - 156
    assert all(len(heads) == 2 for heads in report["removed"]["heads"].values())
    for dimension in ("heads", "mlp", "hidden"):
        summary = report["importance"][dimension]
        assert summary["kept_mean"] > summary["removed_mean"]


def test_pruning_nothing_is_an_error_not_a_copy(tiny_model_dir, tmp_path):
    """A target that removes no unit would write a full copy under a name that says "pruned"."""
    with pytest.raises(CompressError, match="nothing to prune"):
        compress.prune(
            tiny_model_dir("qwen2"), tmp_path / "same", mlp=0.0, importance="magnitude", device="cpu"
        )
    assert not (tmp_path / "same").exists()


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "phi3", "opt"])
def test_every_width_importance_runs(tiny_model_dir, tiny_tokenizer_dir, tmp_path, architecture):
    """Magnitude, Taylor and random need no engine; activation goes through it. All must cut."""
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(f"def function_{i}(x):\n    return x * {i}\n" for i in range(300)))
    source = tiny_model_dir(architecture)
    before = config_geometry(AutoConfig.from_pretrained(source))
    for importance in ("activation", "magnitude", "taylor", "random"):
        out = compress.prune(
            source, tmp_path / importance, mlp=0.25, layers=1, importance=importance, calib=str(text),
            calib_samples=4, seq_len=32, device="cpu",
        )  # fmt: skip
        after = config_geometry(AutoConfig.from_pretrained(out))
        assert after.intermediate_size == before.intermediate_size - round(0.25 * before.intermediate_size)
        assert after.num_layers == before.num_layers - 1


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--mlp", "1.0"], "[0, 1)"),
        (["--heads", "-0.1"], "[0, 1)"),
        (["--heads", "0.25"], "GQA grouping"),  # 1 of 4 heads, KV groups of 2
        (["--layers", "2"], "every layer"),
        (["--layers-keep", "0"], "greater than or equal to 1"),
        (["--hidden-size", "30"], "not a multiple"),
        (["--mlp", "0.3", "--mlp-size", "10"], "not both"),
    ],
)
def test_bad_prune_requests(run_cli, tiny_model_dir, tmp_path, options, fragment):
    code, _, err = run_cli("prune", tiny_model_dir("llama"), *options, "-o", tmp_path / "out")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_prune_refuses_unsupported_and_quantized(run_cli, tiny_model_dir, tmp_path):
    code, _, err = run_cli("prune", tiny_model_dir("gpt2"), "--heads", "0.5", "-o", tmp_path / "a")
    assert_one_line_error(code, err, "head pruning is not supported on gpt2")
    gptq = compress.quantize(tiny_model_dir("llama"), tmp_path / "q", method="rtn", bits=4, group_size=16)
    code, _, err = run_cli("prune", gptq, "--mlp", "0.5", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "already quantized")
    config = json.loads((tiny_model_dir("llama") / "config.json").read_text())
    other = tmp_path / "neox"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    code, _, err = run_cli("prune", other, "--mlp", "0.5", "-o", tmp_path / "c")
    assert_one_line_error(code, err, "structured pruning does not support 'gpt_neox'")


@pytest.mark.parametrize(
    ("width", "fraction", "kept"), [(1536, 0.1, 1408), (1536, 0.3, 1088), (344, 0.5, 172)]
)
def test_a_fractional_mlp_target_keeps_kernel_friendly_widths(width, fraction, kept):
    """SmolLM2's 1536 − 10% would be 1382 = 2 × 691 (groups of 2 at 4 bits); a width that was a
    multiple of 64 stays one. The demo's 344 (not a multiple of 64) is cut as asked."""
    from transformers import LlamaConfig

    from compress.prune.config import PruneConfig
    from compress.prune.plan import plan_sizes

    config = LlamaConfig(
        hidden_size=576, intermediate_size=width, num_attention_heads=9, num_key_value_heads=3
    )
    assert plan_sizes(PruneConfig(mlp=fraction), config).intermediate_size == kept
