"""Which text to calibrate on: `--calib`, else a well-known hub corpus online, else the model's own
samples. Shared by quantization and pruning importance.

Sampling from the model itself (data-free calibration) gives activations from the model's own
distribution; it is worse than real text but far better than random tokens, and it needs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from compress import console
from compress.data import TokenWindows, fingerprint_windows, sample_windows
from compress.errors import CompressError
from compress.modeling import ModelSource, load_tokenizer

DEFAULT_CALIBRATION = "hf:wikitext:wikitext-2-raw-v1:train"
#: Windows taken when the user names no count (a shorter --calib text gives what it holds).
DEFAULT_CALIB_SAMPLES = 128


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


def calibration_windows(
    model: nn.Module,
    source: ModelSource,
    calib: str | None,
    samples: int | None,
    seq_len: int,
    seed: int,
    streaming: bool = False,
) -> TokenWindows:
    """`calib`, else a well-known hub dataset online, else text sampled from the model itself.

    Windows are capped at the model's context length. `samples` None means `DEFAULT_CALIB_SAMPLES`,
    or fewer, with a notice, when the `calib` text is shorter: a user who named no count gets a
    run rather than an error (an explicit count that the text cannot fill is still an error).
    `streaming` models (weights on disk) cannot generate, so they need real text.
    """
    tokenizer = load_tokenizer(source)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or seq_len
    seq_len = min(seq_len, limit)
    wanted = DEFAULT_CALIB_SAMPLES if samples is None else samples
    if calib:
        windows = sample_windows(tokenizer, calib, wanted, seq_len, seed, at_most=samples is None)
        if windows.input_ids.shape[0] < wanted:
            console.notice(
                f"the calibration text fills {windows.input_ids.shape[0]} of the default {wanted} windows "
                f"of {seq_len} tokens: calibrating on those (--calib-samples N asks for a count)"
            )
        return windows
    samples = wanted
    try:
        windows = sample_windows(tokenizer, DEFAULT_CALIBRATION, samples, seq_len, seed)
        console.notice(f"calibrating on {DEFAULT_CALIBRATION} (pass --calib to choose the text)")
        return windows
    except CompressError:
        if streaming:
            raise CompressError(
                "no --calib and the hub is unreachable; data-free calibration samples from the whole "
                "model, which --max-memory keeps on disk: pass --calib"
            ) from None
        console.notice(
            "no --calib and the hub is unreachable: calibrating on text sampled from the model itself"
        )
        return model_generated_windows(model, samples, seq_len, seed)
