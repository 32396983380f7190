"""A transformers tokenizer as llama.cpp's GGUF vocabulary, tokenizing the same text to the same ids.

llama.cpp re-implements tokenizers rather than running `tokenizers`, so the GGUF must name one
llama.cpp reproduces exactly; anything else is refused, since a model fed other ids than the ones
it was trained on (and scored on here) is silently worse. Two kinds are written:

- `llama` (SentencePiece-style BPE over `▁`-joined text with byte fallback: Llama 1/2, TinyLlama,
  stories260K). llama.cpp merges the adjacent pair whose *result* has the highest score, so the
  score of each token is minus the rank of the merge that makes it. Scores of -1000 for every
  token (what a vocab writer without `tokenizer.model` falls back to) make it merge in another
  order: stories260K's perplexity under llama.cpp went from 3.915 to 7.87.
- `gpt2` (byte-level BPE: GPT-2, SmolLM, Llama 3, Qwen): tokens, merges, and a pre-tokenizer
  name llama.cpp knows, chosen from the tokenizer's own pre-tokenizer (plain GPT-2 regex →
  `gpt-2`; GPT-2 regex after splitting every digit → `smollm`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import CompressError

# GGUF token types (llama.cpp's `llama_token_attr` as stored): normal, unknown, control,
# user-defined, unused, byte.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class GGUFVocab:
    """What the GGUF's `tokenizer.ggml.*` keys hold."""

    model: str  # "llama" or "gpt2"
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_space_prefix: bool = False


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    """tokenizer.json's merges, in either of its spellings ("a b" or ["a", "b"])."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _tokens_by_id(data: dict[str, Any], vocab_size: int) -> list[str]:
    """One token per embedding row, in id order: exactly `vocab_size` of them.

    llama.cpp sizes `token_embd` from the token list, so a list of any other length is a file it
    refuses to load ("wrong shape"). An embedding padded past the tokenizer (rows no token maps
    to, as models round the vocabulary up to a multiple of 64) is fine: those rows and any holes
    among the ids get placeholder control tokens, as convert_hf_to_gguf writes them, which no text
    tokenizes to. A tokenizer with ids at or past the embedding's rows is refused: those tokens
    have no embedding, so neither transformers nor llama.cpp can run them.
    """
    tokens: dict[int, str] = {index: text for text, index in data["model"]["vocab"].items()}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
    beyond = sorted(index for index in tokens if index >= vocab_size)
    if beyond:
        raise CompressError(
            f"the tokenizer has {len(beyond)} token(s) at ids past the model's {vocab_size} embedding rows "
            f"(first: {tokens[beyond[0]]!r} = {beyond[0]}); llama.cpp cannot load a GGUF whose vocabulary "
            "is longer than its embedding"
        )
    return [tokens.get(index, f"[PAD{index}]") for index in range(vocab_size)]


def _token_types(data: dict[str, Any], tokens: list[str], unknown: str | None) -> list[int]:
    added = {a["content"]: a for a in data.get("added_tokens", [])}
    known = set(data["model"]["vocab"]) | set(added)
    types = []
    for text in tokens:
        if text in added:
            types.append(CONTROL if added[text].get("special") else USER_DEFINED)
        elif text == unknown:
            types.append(UNKNOWN)
        elif text not in known:
            types.append(CONTROL)  # padding placeholders: never produced by tokenization
        elif _BYTE_TOKEN.match(text) and data["model"].get("byte_fallback"):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return types


def _gpt2_pre(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer, or a one-line refusal."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel" and s.get("use_regex", True)]
    others = [s for s in steps if s.get("type") != "ByteLevel"]
    if len(byte_level) == 1 and not others:
        return "gpt-2"
    digits = [s for s in others if s.get("type") == "Digits" and s.get("individual_digits")]
    if len(byte_level) == 1 and digits and len(others) == 1:
        return "smollm"
    described = json.dumps(pre_tokenizer)[:120]
    raise CompressError(
        f"the tokenizer's pre-tokenizer ({described}) is not one llama.cpp reproduces here "
        "(supported: GPT-2's byte-level regex, optionally after splitting digits)"
    )


def _special_ids(tokenizer_config: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    index = {text: i for i, text in enumerate(tokens)}
    found = {}
    for role in ("bos", "eos", "unk", "pad"):
        value = tokenizer_config.get(f"{role}_token")
        text = value.get("content") if isinstance(value, dict) else value
        if text in index:
            found[role] = index[text]
    return found


def _adds_bos(data: dict[str, Any], tokenizer_config: dict[str, Any]) -> bool:
    """Whether encoding prepends BOS: the post-processor's template says so (tokenizer.json), else
    the `add_bos_token` flag of slow-tokenizer configs."""
    processor = data.get("post_processor") or {}
    steps = processor.get("processors") or [processor]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = step.get("single", [])
            return bool(single) and "SpecialToken" in single[0]
    return bool(tokenizer_config.get("add_bos_token", False))


def read_vocab(model_dir: Path, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer in `model_dir`, or a one-line refusal."""
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CompressError(f"{model_dir} has no tokenizer.json; GGUF export needs the fast tokenizer's file")
    data = json.loads(tokenizer_file.read_text())
    config_file = model_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise CompressError(f"GGUF export supports BPE tokenizers; this one is {model.get('type')!r}")
    tokens = _tokens_by_id(data, vocab_size)
    special = _special_ids(tokenizer_config, tokens)
    pre_type = (data.get("pre_tokenizer") or {}).get("type")
    if model.get("byte_fallback") and pre_type == "Metaspace":
        rank = {"".join(pair): r for r, pair in enumerate(_merge_pairs(model))}
        scores = [-float(rank[text]) if text in rank else 0.0 for text in tokens]
        return GGUFVocab(
            model="llama",
            pre="default",
            tokens=tokens,
            token_types=_token_types(data, tokens, model.get("unk_token")),
            scores=scores,
            special_ids=special,
            add_bos=_adds_bos(data, tokenizer_config),
            add_space_prefix=(data["pre_tokenizer"].get("prepend_scheme", "always") != "never"),
        )
    if model.get("byte_fallback"):
        raise CompressError(f"byte-fallback BPE with a {pre_type!r} pre-tokenizer is not supported")
    return GGUFVocab(
        model="gpt2",
        pre=_gpt2_pre(data.get("pre_tokenizer")),
        tokens=tokens,
        token_types=_token_types(data, tokens, model.get("unk_token")),
        merges=[" ".join(pair) for pair in _merge_pairs(model)],
        special_ids=special,
        add_bos=_adds_bos(data, tokenizer_config),
    )
