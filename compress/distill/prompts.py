"""Prompts for teacher generation, from any data source `compress data` reads.

A prompt dataset (a jsonl `prompt` column, say) gives one prompt per document. A text corpus gives
documents far longer than a prompt, so `prompt_tokens` cuts one span of that many tokens from each
document at a seeded offset: spans from all over a file, not only its first lines (which in source
code are licence headers). The order is a seeded shuffle, so a larger `--samples` extends a smaller
one's prompts rather than replacing them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from compress.data import iter_documents
from compress.errors import CompressError


@dataclass(frozen=True)
class Prompts:
    """Token ids of each prompt, and what identifies them."""

    source: str
    ids: list[list[int]]
    sha256: str


def _span(ids: list[int], length: int | None, rng: random.Random) -> list[int]:
    if length is None or len(ids) <= length:
        return ids
    start = rng.randrange(len(ids) - length + 1)
    return ids[start : start + length]


def load_prompts(tokenizer, source: str, count: int, prompt_tokens: int | None, seed: int) -> Prompts:
    """`count` prompts from `source`; fewer when the source runs out, none is an error."""
    from transformers.utils import logging as hf_logging

    rng = random.Random(seed)
    prompts: list[list[int]] = []
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # documents longer than the context are expected: they are cut
    try:
        for document in iter_documents(source, shuffle_seed=seed):
            ids = tokenizer(document, add_special_tokens=False)["input_ids"]
            if ids:
                prompts.append(_span(ids, prompt_tokens, rng))
            if len(prompts) == count:
                break
    finally:
        hf_logging.set_verbosity(verbosity)
    if not prompts:
        raise CompressError(f"prompt source '{source}' has no prompts (no non-empty documents)")
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(repr(ids).encode())
    return Prompts(source, prompts, digest.hexdigest())
