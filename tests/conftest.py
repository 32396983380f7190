"""Shared fixtures: offline mode, tiny models of every supported architecture, the trained demo model."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

# Every test runs offline, as CI does; set before transformers/datasets/huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
REPO_ROOT = Path(__file__).resolve().parents[1]
# The demo model is cached inside the checkout: a fresh clone builds it, a local re-run reuses it.
os.environ.setdefault("COMPRESS_CACHE_DIR", str(REPO_ROOT / ".cache" / "compress"))

import pytest  # noqa: E402
import torch  # noqa: E402

from compress import cli, console  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = REPO_ROOT.parent / "shared"
STORIES_MODEL = SHARED / "models" / "stories260K"
TINYSTORIES_TEXT = SHARED / "data" / "tinystories" / "tinystories_valid_first1000.txt"

TINY_VOCAB = 300
#: The sizes of every tiny model: 2 blocks, hidden 32, 4 heads over 2 KV heads.
TINY_SIZES = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
#: Fixtures that train or load a trained model: tests using one are not in the fast tier.
TRAINED_MODEL_FIXTURES = {"demo", "pruned", "generations"}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the fast tier (`make test-fast`, `-m fast`): tests that need neither a trained model nor
    the `slow` mark, i.e. tiny tensors and tiny random models only. The full suite is unchanged."""
    for item in items:
        if not TRAINED_MODEL_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


def _tiny_configs() -> dict[str, object]:
    """One tiny config per supported architecture (2 blocks, hidden 32), each with its quirks."""
    from transformers import (
        GemmaConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(TINY_SIZES)
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common, sliding_window=None),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=8),
        "gemma": GemmaConfig(**common, head_dim=8),
        "phi3": Phi3Config(**common, pad_token_id=0),
        "gpt2": GPT2Config(vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128),
        "opt": OPTConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=32,
        ),
    }


ARCHITECTURES = tuple(_tiny_configs())

#: Every further dense family the matrix proves (tests/test_families.py), each built from its own
#: transformers config with the sizes of `_tiny_configs` and its special parts switched on: sliding
#: windows short enough to mask inside a 32-token window, and both layer kinds present.
_FAMILY_OVERRIDES: dict[str, dict] = {
    "ministral": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "gemma2": {"sliding_window": 8},
    "gemma3_text": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "gemma4_text": {
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
        "vocab_size_per_layer_input": TINY_VOCAB,
        "hidden_size_per_layer_input": 16,
        "global_head_dim": 8,
    },
    "phi": {},
    "olmo2": {},
    "olmo3": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "granite": {},
    "smollm3": {},
    "stablelm": {},
    "cohere": {},
    "cohere2": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "glm4": {},
    "exaone4": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "starcoder2": {},
    "gpt_neox": {},
    "falcon": {"head_dim": None},
    "helium": {},
    "nemotron": {},
    "bloom": {},
    "mpt": {},
}
#: Sizes of the mixture-of-experts families' experts (their defaults are 128 experts of 768).
_MOE_OVERRIDES: dict[str, dict] = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
}
#: Mixture-of-experts families: their experts are stacked 3-D tensors (transformers 5).
_MOE_FAMILIES = tuple(_MOE_OVERRIDES)


def _family_config(model_type: str):
    from transformers import AutoConfig

    sizes = dict(TINY_SIZES, head_dim=8, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    options = {**sizes, **_FAMILY_OVERRIDES.get(model_type, {}), **_MOE_OVERRIDES.get(model_type, {})}
    return AutoConfig.for_model(
        model_type, **{key: value for key, value in options.items() if value is not None}
    )


#: The dense family matrix: the eight above and the further families.
FAMILIES = ARCHITECTURES + tuple(_FAMILY_OVERRIDES)
MOE_FAMILIES = _MOE_FAMILIES


def round_block_linears(model, bits: int, group_size: int):
    """`model` with every linear inside its decoder blocks rounded to nearest in place, as RTN
    rounds it: what a packed artifact must reload as."""
    from compress.modeling import discover_layout, find_linear_layers
    from compress.quantize.rtn import rtn_quantize

    for block in discover_layout(model).blocks:
        for layer in find_linear_layers(block):
            weight = layer.module.weight.data
            matrix = weight.T if layer.transposed else weight
            matrix.copy_(rtn_quantize(matrix, bits, group_size, True).dequantize())
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer (trained in a second) saved as a directory."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    text = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=TINY_VOCAB, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Callable[[str], Path]:
    """`tiny_model_dir("phi3")`: a saved random tiny model of that architecture (any of FAMILIES
    or MOE_FAMILIES), with a tokenizer."""
    from transformers import AutoModelForCausalLM

    configs = _tiny_configs()
    made: dict[str, Path] = {}

    def make(architecture: str) -> Path:
        if architecture not in made:
            torch.manual_seed(0)
            config = configs.get(architecture) or _family_config(architecture)
            model = AutoModelForCausalLM.from_config(config)
            path = tmp_path_factory.mktemp(f"tiny-{architecture}")
            model.save_pretrained(path)
            for file in tiny_tokenizer_dir.iterdir():
                (path / file.name).write_bytes(file.read_bytes())
            made[architecture] = path
        return made[architecture]

    return make


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """The trained demo model at the test budget (`--fast`), built once per cache.

    COMPRESS_TEST_DEMO_SEED and COMPRESS_TEST_DEMO_AUTOCAST (auto|bf16|fp32) train another one:
    `make test-quality-matrix` runs the quality tests on three seeds with bf16 autocast on and off,
    so an ordering that holds on one build only does not get into the suite.
    """
    from compress.demo import FAST_RECIPE, DemoRecipe, demo_model

    recipe = DemoRecipe(
        **{
            **FAST_RECIPE.model_dump(),
            "seed": int(os.environ.get("COMPRESS_TEST_DEMO_SEED", FAST_RECIPE.seed)),
            "autocast": os.environ.get("COMPRESS_TEST_DEMO_AUTOCAST", FAST_RECIPE.autocast),
        }
    )
    return demo_model(fast=True, recipe=recipe)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M directory (`compress.realmodel`), or a skip where the wheel cannot be had."""
    from compress.errors import CompressError
    from compress.realmodel import smollm2_dir

    try:
        return smollm2_dir()
    except CompressError as exc:  # no package registry: nothing to test with
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pruned(demo, tmp_path_factory) -> Path:
    """The distillation student: the demo model with half its MLP and a quarter of its heads pruned."""
    import compress

    out = tmp_path_factory.mktemp("distill") / "pruned"
    return compress.prune(demo[0], out, mlp=0.5, heads=0.25, calib_samples=16)


@pytest.fixture(scope="session")
def generations(demo, tmp_path_factory) -> Path:
    """The demo teacher's completions with its top-16 log-probs, in three shards."""
    from compress.distill.generate import generate

    out = tmp_path_factory.mktemp("distill") / "generations"
    return generate(
        demo[0], out, samples=96, max_new_tokens=64, prompt_tokens=32, store_topk=16, shard_size=32
    )


@pytest.fixture
def llama_cpp():
    """llama.cpp's binding; optional on a developer's machine, required where CI sets
    COMPRESS_REQUIRE_LLAMA_CPP=1 (its absence is then a failure, not a skip)."""
    from compress import llamacpp

    if not llamacpp.available():
        if os.environ.get("COMPRESS_REQUIRE_LLAMA_CPP"):
            pytest.fail("llama.cpp is required here (COMPRESS_REQUIRE_LLAMA_CPP) but does not import")
        pytest.skip("llama.cpp is not built here (make llama-cpp)")
    return llamacpp.binding()


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main([str(a) for a in argv])
        console.mode.quiet = console.mode.json = console.mode.debug = False
        logging.disable(logging.NOTSET)  # the CLI quiets library loggers; other tests read them
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """The CLI's contract for bad input: exit 2, exactly one line on stderr, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
