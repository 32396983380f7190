"""Text sources named by one string, cut into token windows with a fingerprint.

A source is one of:

- a local file: `.txt` (documents separated by blank lines), `.jsonl`/`.json`/`.parquet`/`.csv`
  (one document per row, read with `datasets`); append `:column` to choose the text column;
- a local directory: every text or table file below it, in sorted order (`.py`, `.md` and `.rst`
  files are one document each);
- `hf:NAME[:CONFIG][:SPLIT][:COLUMN]`: a hub dataset, streamed through `datasets`;
- `builtin:python-stdlib[:train|:heldout]`: the running Python's own standard-library sources,
  split into train and held-out files by a hash of each file's path (so the split never changes).

Calibration samples random windows (`sample_windows`); evaluation reads windows in order
(`sequential_windows`). Both return the exact token ids used and their sha256 fingerprint.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compress.errors import CompressError

SCHEMES = ("hf", "builtin")
BUILTIN_SOURCES = ("python-stdlib",)
STDLIB_SPLITS = ("train", "heldout")
STDLIB_HELDOUT_PERCENT = 10
_STDLIB_SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
WHOLE_FILE_SUFFIXES = frozenset({".py", ".md", ".rst"})
TEXT_SUFFIXES = frozenset({".txt"}) | WHOLE_FILE_SUFFIXES
KNOWN_SPLITS = frozenset({"train", "test", "validation", "valid", "dev", "eval"})
DEFAULT_SEPARATOR = "\n\n"
_TOKENIZE_CHUNK = 64


@dataclass(frozen=True)
class TextSource:
    """A parsed source string."""

    kind: str  # "file", "directory", "hf" or "builtin"
    location: str  # path, dataset name, or builtin name
    column: str | None = None
    config: str | None = None
    split: str | None = None
    spec: str = ""


@dataclass(frozen=True)
class DataFingerprint:
    """Exactly which tokens were used: source, counts, and the sha256 of the token ids."""

    source: str
    samples: int
    tokens: int
    seq_len: int
    seed: int | None
    sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenWindows:
    """Token windows of one length, ready to batch, with their fingerprint."""

    input_ids: torch.Tensor  # [samples, seq_len], int64
    fingerprint: DataFingerprint


# --- parsing -----------------------------------------------------------------------------------


def parse_source(spec: str) -> TextSource:
    """Parse a source string, checking that local paths exist and schemes are known."""
    spec = spec.strip()
    if not spec:
        raise CompressError("empty data source; pass a file, a directory, hf:NAME or builtin:python-stdlib")
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(path, None, spec)
    head, sep, tail = spec.partition(":")
    if sep and head in SCHEMES:
        return _scheme_source(head, tail, spec)
    prefix, sep, column = spec.rpartition(":")
    if sep and Path(prefix).expanduser().exists():
        return _local_source(Path(prefix).expanduser(), column, spec)
    if sep and "/" not in head and "." not in head and len(head) > 1:
        raise CompressError(
            f"unknown data source scheme '{head}:' in '{spec}'; use a path, hf:NAME or builtin:python-stdlib"
        )
    raise CompressError(f"data source '{spec}' does not exist")


def _local_source(path: Path, column: str | None, spec: str) -> TextSource:
    if path.is_dir():
        return TextSource("directory", str(path), column, spec=spec)
    if path.suffix not in TEXT_SUFFIXES and path.suffix not in TABLE_FORMATS:
        known = ", ".join(sorted(TEXT_SUFFIXES | TABLE_FORMATS.keys()))
        raise CompressError(f"data file '{path}' has an unsupported type; use one of {known}")
    if column and path.suffix in TEXT_SUFFIXES:
        raise CompressError(f"'{path}' is plain text; a column (':{column}') applies only to table files")
    return TextSource("file", str(path), column, spec=spec)


def _scheme_source(scheme: str, rest: str, spec: str) -> TextSource:
    parts = [p for p in rest.split(":")]
    if scheme == "builtin":
        name = parts[0]
        if name not in BUILTIN_SOURCES:
            raise CompressError(f"unknown builtin source '{name}'; available: {', '.join(BUILTIN_SOURCES)}")
        split = parts[1] if len(parts) > 1 else "train"
        if split not in STDLIB_SPLITS or len(parts) > 2:
            raise CompressError(f"builtin:{name} has the splits {', '.join(STDLIB_SPLITS)}; got '{rest}'")
        return TextSource("builtin", name, split=split, spec=spec)
    if not parts[0]:
        raise CompressError(f"'{spec}' names no dataset; write hf:NAME[:CONFIG][:SPLIT][:COLUMN]")
    name, options = parts[0], parts[1:]
    if len(options) > 3:
        raise CompressError(f"'{spec}' has too many parts; write hf:NAME[:CONFIG][:SPLIT][:COLUMN]")
    config = split = column = None
    if len(options) == 1:  # one option: a split when it looks like one, else a config
        if options[0] in KNOWN_SPLITS or "[" in options[0]:
            split = options[0]
        else:
            config = options[0]
    elif options:
        config, split = options[0] or None, options[1] or None
        column = options[2] if len(options) == 3 else None
    return TextSource("hf", name, column, config, split or "train", spec=spec)


# --- reading documents -------------------------------------------------------------------------


def iter_documents(source: TextSource | str, shuffle_seed: int | None = None) -> Iterator[str]:
    """Non-empty documents of a source, in order, or shuffled (document by document) with a seed.

    Local sources are read whole before shuffling: calibration and eval corpora are text that fits
    in memory, and only a document-level shuffle samples a single large file fairly. Hub datasets
    stream, shuffled through a buffer.
    """
    if isinstance(source, str):
        source = parse_source(source)
    if source.kind == "hf":
        documents: Iterable[str] = _hub_documents(source, shuffle_seed)
    else:
        local = [doc for path in local_files(source) for doc in _read_file(path, source.column)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(local)
        documents = local
    return (doc for doc in documents if doc.strip())


def local_files(source: TextSource) -> list[Path]:
    """The files a local or builtin source reads, in a fixed order (what recipes fingerprint)."""
    if source.kind == "builtin":
        return stdlib_files(source.split or "train")
    if source.kind == "file":
        return [Path(source.location)]
    root = Path(source.location)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and (p.suffix in TEXT_SUFFIXES or p.suffix in TABLE_FORMATS)
    )
    if not files:
        raise CompressError(f"directory '{root}' holds no text files (.txt, .py, .md, .jsonl, .csv, …)")
    return files


def _read_file(path: Path, column: str | None) -> list[str]:
    if path.suffix in TABLE_FORMATS:
        return _read_table(path, column)
    text = path.read_text(encoding="utf-8", errors="replace")
    _check_is_text(path, text)
    if path.suffix in WHOLE_FILE_SUFFIXES:
        return [text]
    return [block.strip("\n") for block in text.split("\n\n")]


#: Above this share of undecodable bytes or control characters, a file is binary, not text.
MAX_NON_TEXT_SHARE = 0.01


def _check_is_text(path: Path, text: str) -> None:
    """Refuse binary data: decoded leniently it still tokenizes, into windows of byte tokens that
    would calibrate or score a model on noise without a word of warning."""
    sample = text[:1_000_000]
    odd = sum(1 for char in sample if char == "\ufffd" or (char < " " and char not in "\n\r\t\f"))
    if sample and odd > MAX_NON_TEXT_SHARE * len(sample):
        raise CompressError(
            f"'{path}' is not text ({odd / len(sample):.0%} undecodable or control characters); "
            "give a UTF-8 text, .jsonl or .csv file"
        )


def _read_table(path: Path, column: str | None) -> list[str]:
    import datasets
    from datasets.utils import logging as datasets_logging

    # Its JSON reader logs the parse error at ERROR level before raising it: the one-line error
    # below says the same, and a second stderr line would break the CLI's one-line contract.
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        table = datasets.load_dataset(TABLE_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a malformed file
        raise CompressError(f"cannot read '{path}' as {path.suffix[1:]}: {_reason(exc)}") from exc
    finally:
        datasets_logging.set_verbosity(verbosity)
    return list(table[_text_column(table.column_names, table.features, column, str(path))])


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong: `datasets` wraps the parser's error ("JSON parse error:
    Invalid value. in row 0") in a generic one ("An error occurred while generating the dataset")."""
    cause = exc.__cause__
    if type(exc).__name__ == "DatasetGenerationError" and cause is not None:
        return _reason(cause)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _text_column(names: list[str], features, column: str | None, where: str) -> str:
    """The chosen column, else `text`, else the only string column."""
    if column:
        if column not in names:
            raise CompressError(f"'{where}' has no column '{column}'; columns: {', '.join(names)}")
        return column
    if "text" in names:
        return "text"
    strings = [n for n in names if getattr(features.get(n), "dtype", None) in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise CompressError(f"'{where}' has no 'text' column; choose one with ':COLUMN' from {', '.join(names)}")


def check_readable(spec: str) -> None:
    """Open a data source and read its first document: a command that scores or trains on it at
    the end fails before its work (offline hub data, a missing file), not after."""
    if next(iter_documents(parse_source(spec)), None) is None:
        raise CompressError(f"data source '{spec}' is empty")


def _hub_documents(source: TextSource, shuffle_seed: int | None) -> Iterator[str]:
    import datasets

    try:
        stream = datasets.load_dataset(source.location, source.config, split=source.split, streaming=True)
        if shuffle_seed is not None:
            stream = stream.shuffle(seed=shuffle_seed, buffer_size=10_000)
        column = _text_column(
            list(stream.column_names or []), stream.features or {}, source.column, source.spec
        )
    except CompressError:
        raise
    except Exception as exc:  # offline, missing, gated: datasets uses many exception types
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "offline" in message.lower() or "OfflineModeIsEnabled" in repr(exc):
            raise CompressError(
                f"hub dataset '{source.location}' cannot be loaded offline; use a local file instead"
            ) from exc
        raise CompressError(f"cannot load hub dataset '{source.location}': {message}") from exc
    return (row[column] for row in stream)


def stdlib_root() -> Path:
    """The running Python's standard library directory (the base install's, also inside a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_split_of(relative_path: str) -> str:
    """`heldout` for a fixed ~10% of files chosen by a hash of the path, `train` for the rest."""
    bucket = int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < STDLIB_HELDOUT_PERCENT else "train"


def stdlib_files(split: str) -> list[Path]:
    """Standard-library `.py` files of one split, tests and third-party packages excluded."""
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _STDLIB_SKIPPED_DIRS.intersection(relative.parts[:-1]):
            continue
        if stdlib_split_of(relative.as_posix()) == split:
            files.append(path)
    if not files:
        raise CompressError(f"no standard-library sources found under {root}")
    return files


# --- tokens ------------------------------------------------------------------------------------


def _token_stream(tokenizer, documents: Iterator[str], separator: str, needed: int | None) -> list[int]:
    """Token ids of the documents joined by `separator`, stopping once `needed` ids are collected."""
    from transformers.utils import logging as hf_logging

    separator_ids = tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
    ids: list[int] = []
    chunk: list[str] = []

    def flush() -> None:
        # Documents longer than the model's context are expected here (they are cut into windows
        # afterwards), so transformers' "sequence length is longer than" warning is silenced.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            encoded_chunk = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        finally:
            hf_logging.set_verbosity(verbosity)
        for encoded in encoded_chunk:
            if ids:
                ids.extend(separator_ids)
            ids.extend(encoded)
        chunk.clear()

    for document in documents:
        chunk.append(document)
        if len(chunk) == _TOKENIZE_CHUNK:
            flush()
            if needed is not None and len(ids) >= needed:
                return ids
    if chunk:
        flush()
    return ids


def fingerprint_windows(spec: str, windows: torch.Tensor, seed: int | None) -> DataFingerprint:
    digest = hashlib.sha256(str(tuple(windows.shape)).encode())
    digest.update(windows.to(torch.int32).contiguous().numpy().tobytes())
    return DataFingerprint(
        source=spec,
        samples=int(windows.shape[0]),
        tokens=int(windows.numel()),
        seq_len=int(windows.shape[1]) if windows.ndim == 2 else 0,
        seed=seed,
        sha256=digest.hexdigest(),
    )


def _cut(ids: list[int], seq_len: int, count: int) -> torch.Tensor:
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 2:
        raise CompressError(f"sequence length must be at least 2 tokens, got {seq_len}")


def sample_windows(
    tokenizer,
    source: str,
    samples: int,
    seq_len: int,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
    at_most: bool = False,
) -> TokenWindows:
    """`samples` windows of `seq_len` tokens from documents shuffled with `seed` (calibration).

    Raises when the source cannot fill every window: quietly calibrating on less is how quality
    regressions hide. With `at_most`, a shorter source gives the full windows it holds (at least
    one); the caller says so.
    """
    _check_seq_len(seq_len)
    if samples < 1:
        raise CompressError(f"the number of samples must be at least 1, got {samples}")
    parsed = parse_source(source)
    ids = _token_stream(tokenizer, iter_documents(parsed, seed), separator, samples * seq_len)
    if at_most and seq_len <= len(ids) < samples * seq_len:
        samples = len(ids) // seq_len
    if len(ids) < samples * seq_len:
        _raise_too_short(source, len(ids), f"{samples} windows of {seq_len} tokens")
    windows = _cut(ids, seq_len, samples)
    return TokenWindows(windows, fingerprint_windows(source, windows, seed))


def sequential_windows(
    tokenizer,
    source: str,
    seq_len: int,
    max_tokens: int | None = None,
    separator: str = DEFAULT_SEPARATOR,
) -> TokenWindows:
    """Non-overlapping windows over the documents in order, up to `max_tokens` (evaluation)."""
    _check_seq_len(seq_len)
    parsed = parse_source(source)
    ids = _token_stream(tokenizer, iter_documents(parsed), separator, max_tokens)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    count = len(ids) // seq_len
    if count == 0:
        _raise_too_short(source, len(ids), f"one window of {seq_len} tokens")
    windows = _cut(ids, seq_len, count)
    return TokenWindows(windows, fingerprint_windows(source, windows, None))


def _raise_too_short(source: str, tokens: int, needed: str) -> None:
    if tokens == 0:
        raise CompressError(f"data source '{source}' is empty")
    raise CompressError(f"data source '{source}' has {tokens} tokens, fewer than {needed}")
