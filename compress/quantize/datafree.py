"""Calibration text when none is given: a well-known hub corpus online, else the model's own samples.

Sampling from the model itself (data-free calibration) gives activations from the model's own
distribution; it is worse than real text but far better than random tokens, and it needs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.data import TokenWindows, fingerprint_windows

DEFAULT_CALIBRATION = "hf:wikitext:wikitext-2-raw-v1:train"


@torch.inference_mode()
def model_generated_windows(model: nn.Module, samples: int, seq_len: int, seed: int) -> TokenWindows:
    """`samples` sequences of `seq_len` tokens sampled from the model, each from a random first token."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    rows = []
    for start in range(0, samples, 16):
        count = min(16, samples - start)
        first = torch.randint(0, vocab, (count, 1), generator=generator).to(device)
        out = model.generate(
            input_ids=first,
            attention_mask=torch.ones_like(first),
            do_sample=True,
            top_k=0,
            max_new_tokens=seq_len - 1,
            min_new_tokens=seq_len - 1,
            pad_token_id=0,
        )
        rows.append(out[:, :seq_len].cpu())
    windows = torch.cat(rows)
    return TokenWindows(windows, fingerprint_windows(f"model-generated:seed={seed}", windows, seed))
