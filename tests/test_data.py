"""Text sources, sampling, windows and fingerprints."""

from __future__ import annotations

import json

import pytest

from compress.data import (
    iter_documents,
    parse_source,
    sample_windows,
    sequential_windows,
    stdlib_files,
    stdlib_root,
    stdlib_split_of,
)
from compress.errors import CompressError

STORIES = [f"Story number {i}. The cat sat on mat {i} and looked at the dog." for i in range(60)]


@pytest.fixture
def corpus(tmp_path):
    """The same 60 documents in every supported file type."""
    import pandas as pd

    txt = tmp_path / "stories.txt"
    txt.write_text("\n\n".join(STORIES) + "\n")
    rows = [{"id": i, "body": s, "note": "x"} for i, s in enumerate(STORIES)]
    jsonl = tmp_path / "stories.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(STORIES)))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "rows.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "rows.csv", index=False)
    return tmp_path


@pytest.mark.parametrize(
    "name", ["stories.txt", "stories.jsonl", "rows.json:body", "rows.parquet:body", "rows.csv:body"]
)
def test_every_file_type_reads_the_same_documents(corpus, name):
    assert list(iter_documents(str(corpus / name))) == STORIES


def test_column_is_required_when_ambiguous(corpus):
    with pytest.raises(CompressError, match="no 'text' column"):
        list(iter_documents(str(corpus / "rows.csv")))
    with pytest.raises(CompressError, match="no column 'missing'"):
        list(iter_documents(str(corpus / "rows.parquet") + ":missing"))


def test_directory_reads_each_file_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second doc\n\nthird doc")
    (tmp_path / "a.py").write_text("def first():\n\n    return 1\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("not read")
    assert list(iter_documents(str(tmp_path))) == [
        "def first():\n\n    return 1\n",
        "second doc",
        "third doc",
    ]


def test_builtin_stdlib_split_is_fixed_and_disjoint():
    train, heldout = stdlib_files("train"), stdlib_files("heldout")
    assert not set(train) & set(heldout)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.2
    # The split is a pure function of the path: the same on every machine with this Python.
    some = heldout[0].relative_to(stdlib_root()).as_posix()
    assert stdlib_split_of(some) == "heldout"
    assert all("site-packages" not in p.parts and "test" not in p.parts for p in train + heldout)
    source = parse_source("builtin:python-stdlib:heldout")
    assert (source.kind, source.split) == ("builtin", "heldout")
    assert parse_source("builtin:python-stdlib").split == "train"


def test_hub_source_parsing():
    assert parse_source("hf:wikitext:wikitext-2-raw-v1:test").config == "wikitext-2-raw-v1"
    assert parse_source("hf:wikitext:wikitext-2-raw-v1:test").split == "test"
    assert parse_source("hf:roneneldan/TinyStories:validation").split == "validation"
    only_config = parse_source("hf:allenai/c4:en")
    assert (only_config.config, only_config.split) == ("en", "train")
    assert parse_source("hf:org/data::train:content").column == "content"


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(CompressError, match="cannot be loaded offline|cannot load hub dataset"):
        list(iter_documents("hf:some-org/not-cached-dataset"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("s3:bucket/data", "unknown data source scheme 's3:'"),
        ("/no/such/file.txt", "does not exist"),
        ("builtin:nonsense", "unknown builtin source"),
        ("builtin:python-stdlib:validation", "has the splits"),
        ("", "empty data source"),
    ],
)
def test_bad_source_strings(spec, message):
    with pytest.raises(CompressError, match=message):
        parse_source(spec)


def test_empty_and_too_short_files(tmp_path, tiny_tokenizer):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "short.txt").write_text("def f(x): return x")
    with pytest.raises(CompressError, match="is empty"):
        sequential_windows(tiny_tokenizer, str(tmp_path / "empty.txt"), seq_len=16)
    with pytest.raises(CompressError, match="fewer than one window of 64 tokens"):
        sequential_windows(tiny_tokenizer, str(tmp_path / "short.txt"), seq_len=64)
    with pytest.raises(CompressError, match="fewer than 4 windows"):
        sample_windows(tiny_tokenizer, str(tmp_path / "short.txt"), samples=4, seq_len=8)


def test_sampling_is_deterministic_and_fingerprinted(corpus, tiny_tokenizer):
    source = str(corpus / "stories.txt")
    first = sample_windows(tiny_tokenizer, source, samples=6, seq_len=32, seed=1)
    again = sample_windows(tiny_tokenizer, source, samples=6, seq_len=32, seed=1)
    other = sample_windows(tiny_tokenizer, source, samples=6, seq_len=32, seed=2)
    assert first.input_ids.shape == (6, 32)
    assert first.input_ids.equal(again.input_ids)
    assert first.fingerprint == again.fingerprint
    assert not first.input_ids.equal(other.input_ids)
    assert first.fingerprint.sha256 != other.fingerprint.sha256
    assert (first.fingerprint.samples, first.fingerprint.tokens, first.fingerprint.seed) == (6, 192, 1)


def test_sequential_windows_follow_document_order(corpus, tiny_tokenizer):
    windows = sequential_windows(tiny_tokenizer, str(corpus / "stories.txt"), seq_len=16, max_tokens=64)
    assert windows.input_ids.shape == (4, 16)
    text = tiny_tokenizer.decode(windows.input_ids.flatten())
    assert text.startswith(STORIES[0][:20])
    # The same text, whatever file type it came in, gives the same tokens and fingerprint.
    from_jsonl = sequential_windows(tiny_tokenizer, str(corpus / "stories.jsonl"), seq_len=16, max_tokens=64)
    assert from_jsonl.input_ids.equal(windows.input_ids)
    assert from_jsonl.fingerprint.sha256 == windows.fingerprint.sha256
