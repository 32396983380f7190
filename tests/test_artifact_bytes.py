"""Refactors keep artifacts byte for byte: the weight files of the deterministic methods on
stories260K against digests recorded before the technique registry (issue 15).

GPTQ, AWQ and activation-ranked pruning go through BLAS, whose rounding differs between machines,
so they are compared before and after a refactor on one machine instead (docs/decisions.md,
"Technique registry"). A digest here changes only when an artifact's bytes change: a deliberate
format change or a dependency upgrade (torch, safetensors, bitsandbytes) that rewrites them is
recorded again, with the reason, in the commit that does it.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import STORIES_MODEL

import compress

RECORDED = {
    "fp16": "d0179c92b62c5d4b74cd4c90e807a3c946f98762151c87dcb8275e281937c41e",
    "rtn": "80f1dfaa7999847d7dbd16417817fb8d5c89f6e2f763fc288e4c1ec7e21005f2",
    "int8": "5f966f0ba924f3e3734c70abea6489f496e8600a814138454dfcd964aa49e900",
}


@pytest.mark.parametrize("method", sorted(RECORDED))
def test_weights_are_the_recorded_bytes(tmp_path, method):
    path = compress.quantize(
        STORIES_MODEL, tmp_path / method, method=method, bits=4 if method == "rtn" else None
    )
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == RECORDED[method]
