"""The technique contract: a new technique is one module, and it is then a CLI command, a recipe
stage with validation and caching, and an artifact with a manifest, without an edit elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import STORIES_MODEL, TINYSTORIES_TEXT

import compress.techniques
from compress import technique as registry
from compress.artifact import read_manifest
from compress.pipeline.schema import load_recipe

#: What a newcomer writes: a config, a run that publishes an artifact, and one registration.
NOISE_MODULE = '''
"""Seeded Gaussian noise on every block weight: how quality degrades with weight error."""

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import DENSE_FORMAT, api_call, new_manifest, publish, save_model_files
from compress.modeling import discover_layout, load_model, resolve_device, resolve_model
from compress.staging import staged_directory
from compress.technique import Technique, register
from compress.telemetry import PhaseTimer


class NoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sigma: float = Field(0.01, gt=0, description="Noise size, relative to each weight's RMS.")
    seed: int = Field(0, description="Noise seed.")


def run(source, config, out, context):
    model_source = resolve_model(source)
    out = Path(out) if out is not None else Path("compressed") / "noised"
    timer = PhaseTimer()
    with timer.phase("noise"):
        model = load_model(model_source, "float32", "cpu", context.trust_remote_code)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for block in discover_layout(model).blocks:
                for weight in (p for p in block.parameters() if p.dim() == 2):
                    noise = torch.randn(weight.shape, generator=generator)
                    weight.add_(noise * config.sigma * weight.pow(2).mean().sqrt())
    with staged_directory(out, context.force) as staging:
        save_model_files(model, model_source.path, staging)
        manifest = new_manifest(
            method="noise",
            config=config,
            source=model_source,
            command=context.command or api_call("noise", source, out, **config.model_dump()),
            recipe=context.recipe,
            format=DENSE_FORMAT,
            phases=timer.as_dicts(),
            device=resolve_device("cpu"),
            seed=config.seed,
        )
        publish(staging, manifest, model)
    return out


register(
    Technique(
        name="noise",
        config=NoiseConfig,
        run=run,
        summary=lambda config: f"noise sigma {config.sigma}",
        help="Add seeded noise to every block weight.",
        recipe_data=lambda config, data: {"seed": data.seed},
    )
)
'''


@pytest.fixture
def noise_technique(tmp_path, monkeypatch):
    """The module above dropped into a directory of the `compress.techniques` package."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "noise.py").write_text(textwrap.dedent(NOISE_MODULE))
    monkeypatch.setattr(compress.techniques, "__path__", [*compress.techniques.__path__, str(plugins)])
    registry.discover()
    yield registry.technique("noise")
    registry.unregister("noise")
    sys.modules.pop("compress.techniques.noise", None)


def recipe_text(model: Path, stage: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        name: noisy
        model: {model}
        seed: 3
        data:
          eval: {{source: "{TINYSTORIES_TEXT}", seq_len: 64, max_tokens: 512}}
        stages:
          - {stage}
        eval:
          suite: quick
          metrics: [ppl, size]
        """)


def test_a_technique_module_is_a_command_a_recipe_stage_and_an_artifact(noise_technique, run_cli, tmp_path):
    code, out, _ = run_cli("--help")
    assert code == 0 and "noise" in out and "Add seeded noise" in out
    code, out, _ = run_cli("noise", "--help")
    assert code == 0 and "--sigma" in out and "Noise size" in out

    code, out, err = run_cli("--json", "noise", STORIES_MODEL, "--sigma", "0.05", "--out", tmp_path / "cli")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "cli")
    assert manifest.method == "noise" and manifest.parameters == {"sigma": 0.05, "seed": 0}
    assert manifest.command.startswith("compress --json noise")
    assert json.loads(out)["artifact"] == str(tmp_path / "cli")

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe_text(STORIES_MODEL, "{name: n, noise: {sigmaa: 0.1}}"))
    code, _, err = run_cli("run", bad)
    assert code == 2 and "stages[0].noise: unknown option 'sigmaa'" in err and "did you mean 'sigma'" in err

    good = tmp_path / "recipe.yaml"
    good.write_text(recipe_text(STORIES_MODEL, "{name: n, noise: {sigma: 0.05}}"))
    loaded = load_recipe(good)
    assert loaded.recipe.stages[0].summary() == "noise sigma 0.05"
    run_dir = tmp_path / "run"
    assert run_cli("run", good, "--out", run_dir)[0] == 0
    stage = read_manifest(run_dir / "n")
    assert stage.method == "noise" and stage.parameters["seed"] == 3  # the recipe's seed filled it
    assert stage.recipe["stage"] == "n" and stage.recipe["key"]
    assert run_cli("run", good, "--out", run_dir)[0] == 0
    statuses = {s["name"]: s["status"] for s in json.loads((run_dir / "results.json").read_text())["stages"]}
    assert statuses == {"n": "cached"}


def test_unregistered_technique_leaves_the_cli_and_the_recipe_schema(run_cli, tmp_path):
    code, out, _ = run_cli("--help")
    assert code == 0 and "noise" not in out
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(STORIES_MODEL, "{name: n, noise: {sigma: 0.05}}"))
    code, _, err = run_cli("run", recipe, "--dry-run")
    assert code == 2 and "unknown key 'noise'" in err


def test_every_builtin_technique_is_registered_with_a_config_and_a_summary():
    found = registry.techniques()
    assert list(found)[:3] == ["quantize", "prune", "distill"]
    for technique in found.values():
        assert technique.summary(technique.config()) and technique.help


def test_help_lists_every_technique_without_importing_torch():
    """Technique modules import configs only: `compress --help` builds every command without torch."""
    script = (
        "import sys; from compress import cli; code = cli.main(['--help']); "
        "print('torch' in sys.modules, code)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False 0"
    for name in registry.techniques():
        assert name in result.stdout
