"""External checks on a real pretrained model: `../shared/models/stories260K` with TinyStories text.

Skipped cleanly when `../shared` is absent (it is not part of the project).
"""

from __future__ import annotations

import pytest
import torch
from conftest import STORIES_MODEL, TINYSTORIES_TEXT

import compress
from compress.data import sequential_windows
from compress.evaluate.perplexity import perplexity
from compress.modeling import discover_layout, load_model, load_tokenizer, resolve_model

pytestmark = pytest.mark.skipif(
    not (STORIES_MODEL.is_dir() and TINYSTORIES_TEXT.is_file()), reason="../shared is not present"
)


@pytest.fixture(scope="module")
def stories():
    source = resolve_model(STORIES_MODEL)
    tokenizer = load_tokenizer(source)
    windows = sequential_windows(tokenizer, str(TINYSTORIES_TEXT), seq_len=256, max_tokens=256 * 64)
    return source, windows


def test_layout_of_a_real_llama(stories):
    source, _ = stories
    layout = discover_layout(load_model(source, device="cpu"))
    assert len(layout.blocks) == 5
    shapes = {layer.name: (layer.in_features, layer.out_features) for layer in layout.linear_layers(0)}
    # hidden 64, 8 query heads and 4 KV heads of 8, MLP 172 (which 128 does not divide).
    assert shapes["self_attn.k_proj"] == (64, 32) and shapes["mlp.down_proj"] == (172, 64)


def test_real_model_perplexity_and_fp16_fidelity(stories, tmp_path):
    source, windows = stories
    model = load_model(source, device="cpu")
    baseline = perplexity(model, windows.input_ids)
    # Stories joined by blank lines without BOS, windows of 256: near the README's 4.30 (BOS-per-story).
    assert 3.5 < baseline.ppl < 6.0

    out = compress.quantize(STORIES_MODEL, tmp_path / "fp16", method="fp16", device="cpu")
    artifact = load_model(resolve_model(out), dtype="float32", device="cpu")
    fp16 = perplexity(artifact, windows.input_ids)
    assert abs(fp16.ppl - baseline.ppl) / baseline.ppl < 1e-3
    with torch.inference_mode():
        sample = windows.input_ids[:2]
        assert (artifact(input_ids=sample).logits - model(input_ids=sample).logits).abs().max() < 0.05
