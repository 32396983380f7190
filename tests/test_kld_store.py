"""The top-K baseline store: exact where it keeps everything, unbiased where it samples the tail,
sized by K and the samples rather than the vocabulary; checked on SmolLM2's 49k vocabulary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error

import compress
from compress.evaluate.divergence import DivergenceAccumulator, TopK, kl_divergence, topk_kl_divergence
from compress.evaluate.harness import EvalRequest, evaluate
from compress.evaluate.suite import StoreLayout, load_suite


def _pair(positions: int = 4000, vocab: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A peaked baseline and a perturbed copy, like a model and its quantized artifact."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(positions, vocab, generator=generator) * 3
    noise = torch.randn(positions, vocab, generator=generator) * 0.3
    return F.log_softmax(logits, -1), F.log_softmax(logits + noise, -1)


def test_keeping_the_whole_vocabulary_is_exact():
    p, q = _pair(200, 300)
    top = TopK.of(p, torch.zeros(200, dtype=torch.long), k=300)
    torch.testing.assert_close(topk_kl_divergence(top, q), kl_divergence(p, q), atol=1e-5, rtol=1e-5)


def test_the_tail_bucket_is_a_lower_bound_and_tail_samples_are_unbiased():
    p, q = _pair()
    targets = torch.randint(0, 5000, (4000,), generator=torch.Generator().manual_seed(1))
    exact = kl_divergence(p, q).mean().item()
    bucket = topk_kl_divergence(TopK.of(p, targets, k=32), q)
    assert (bucket <= kl_divergence(p, q) + 1e-5).all() and bucket.mean().item() < 0.9 * exact
    offsets = torch.rand(p.shape[0], 1, generator=torch.Generator().manual_seed(0))
    sampled = TopK.of(p, targets, k=32, tail_samples=224, offsets=offsets)
    assert topk_kl_divergence(sampled, q).mean().item() == pytest.approx(exact, rel=0.01)


def test_same_top1_and_delta_p_are_exact_from_the_store():
    p, q = _pair(500, 800)
    targets = torch.randint(0, 800, (500,), generator=torch.Generator().manual_seed(2))
    full, top = DivergenceAccumulator(), DivergenceAccumulator()
    full.add(p, q, targets)
    top.add(TopK.of(p, targets, k=8, tail_samples=16), q, targets)
    assert full.summary()["same_top1"] == top.summary()["same_top1"]
    assert full.summary()["delta_p"] == top.summary()["delta_p"]


def test_small_vocabularies_keep_the_exact_full_store():
    suite = load_suite("quick")
    assert suite.store_layout(2048).topk is None  # top-K would save only ×4 here
    layout = suite.store_layout(49_152)
    assert layout.topk == 32 and layout.tail_samples == 224
    full = StoreLayout(None, 0, "float32").bytes_per_position(49_152)
    assert full / layout.bytes_per_position(49_152) >= 50


@pytest.fixture(scope="module")
def smollm2_rtn(smollm2, tmp_path_factory):
    return smollm2, compress.quantize(smollm2, tmp_path_factory.mktemp("kld") / "rtn4", method="rtn", bits=4)


@pytest.mark.slow
def test_topk_store_kld_matches_the_full_store_on_smollm2(smollm2_rtn, monkeypatch, tmp_path):
    """Within 1% of the full-vocabulary KLD, from a store over 50× smaller."""
    source, artifact = smollm2_rtn
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))  # fresh stores, measured on disk
    base = load_suite("quick").model_copy(update={"metrics": ["kld"], "max_tokens": 2048, "seq_len": 256})
    kld, sizes = {}, {}
    for store in ("topk", "full"):
        suite = base.model_copy(update={"kld_store": store}).check()
        report, _ = evaluate(EvalRequest([str(artifact)], suite, str(source), reuse=False))
        kld[store] = report.results[0].metrics["kld"]["mean"]
        stores = list((tmp_path / "eval" / "baselines").iterdir())
        sizes[store] = sum(f.stat().st_size for d in stores for f in d.iterdir()) - sum(sizes.values())
    print(f"KLD top-K {kld['topk']:.5f} vs full {kld['full']:.5f}")
    print(f"store {sizes['topk']:,} vs {sizes['full']:,} bytes")
    assert kld["topk"] == pytest.approx(kld["full"], rel=0.01)
    assert sizes["full"] >= 50 * sizes["topk"]


def test_a_store_over_budget_is_refused_before_any_work(run_cli, demo):
    code, _, err = run_cli(
        "eval", demo[0], "--baseline", demo[0], "--suite", "quick", "--metrics", "kld", "--max-store", "1MB"
    )
    assert_one_line_error(code, err, "--max-store 1MB")
