"""llama.cpp through its Python binding: the quantizer `export gguf` finishes with, and the runtime
the harness scores GGUF files in.

The binding (`llama-cpp-python`) is optional and has no wheel on PyPI; `make llama-cpp` builds it
from the pinned sdist with flags this kind of VM runs (no `-march=native`, no AMX: see
tools/build_llama_cpp.sh). Everything here imports it on first use, and its absence is a one-line
error that says how to get it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError

HOW_TO_GET = (
    "build it once with `make llama-cpp` (llama-cpp-python from source with VM-safe flags), "
    "or pip install 'compress[llama]' on an ordinary machine"
)
#: `--type` names for llama.cpp's file types (`llama_ftype`), as llama-quantize spells them.
FILE_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
    "q2_k": "MOSTLY_Q2_K",
    "q3_k_s": "MOSTLY_Q3_K_S",
    "q3_k_m": "MOSTLY_Q3_K_M",
    "q3_k_l": "MOSTLY_Q3_K_L",
    "q4_k_s": "MOSTLY_Q4_K_S",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q5_k_s": "MOSTLY_Q5_K_S",
    "q5_k_m": "MOSTLY_Q5_K_M",
    "q6_k": "MOSTLY_Q6_K",
}
#: The numeric `llama_ftype` of each (stable across llama.cpp releases; written into the GGUF).
FILE_TYPE_IDS = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
    "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
    "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}  # fmt: skip
#: KV-cache element types by name (`ggml_type` ids).
KV_TYPES = {"f32": 0, "f16": 1}


#: `ggml_log_level` values: an error, and a line continuing the previous message.
_LOG_ERROR, _LOG_CONTINUED = 3, 5


class _Logs:
    """Where llama.cpp's own log lines go. Its C code (loader, quantizer, ggml) logs through one
    callback, which the binding points at a printer that lets ERROR lines through and, unless its
    logger's level says otherwise, everything; a failed quantization then printed half a dozen
    lines above our one-line error. Ours writes them to stderr only where the CLI runs with
    --verbose (or a library caller left logging on), and keeps the error lines, so a failure can
    say in one line what llama.cpp said."""

    def __init__(self) -> None:
        self.callback: Any = None  # the ctypes function, kept alive as long as llama.cpp may call it
        self.errors: list[str] = []
        self._level = 0

    @staticmethod
    def verbose() -> bool:
        """The CLI disables library logging below ERROR unless --verbose (`cli._silence_libraries`)."""
        return logging.root.manager.disable < logging.WARNING

    def install(self, llama_cpp: Any) -> None:
        if self.callback is not None:
            return

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, _user_data: Any) -> None:
            self._level = self._level if level == _LOG_CONTINUED else level
            message = text.decode("utf-8", "replace")
            if self._level == _LOG_ERROR:
                self.errors = [*self.errors[-31:], message]
            if self.verbose():
                sys.stderr.write(message)
                sys.stderr.flush()

        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        self.callback = callback

    def reason(self) -> str | None:
        """What llama.cpp last gave as the reason of a failure (`failed to quantize: …`), if anything."""
        lines = [line.strip() for line in "".join(self.errors).splitlines()]
        lines = [line for line in lines if line and not set(line) <= {"=", "-"}]
        if not lines:
            return None
        return lines[-1].split("failed to quantize: ", 1)[-1]


_logs = _Logs()


def binding() -> Any:
    """The `llama_cpp` module, or a one-line error saying how to build it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise CompressError(f"llama.cpp is not available: {HOW_TO_GET}") from exc
    _logs.install(llama_cpp)
    return llama_cpp


def available() -> bool:
    try:
        binding()
    except CompressError:
        return False
    return True


def quantize_file(
    source: Path, target: Path, file_type: str, threads: int, imatrix: dict[str, torch.Tensor] | None = None
) -> None:
    """llama-quantize `source` into `target` as `file_type`. Tensors already of the type a tensor is
    given (our lossless blocks) are copied; requantizing any other quantized tensor is refused.
    `imatrix` (GGUF tensor name → mean x² per input column) weights the rounding, as llama-quantize's
    `--imatrix` does."""
    from compress.export.imatrix import ImatrixTable

    llama_cpp = binding()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{FILE_TYPES[file_type]}")
    params.nthread = threads
    params.allow_requantize = False
    table = ImatrixTable(llama_cpp.llama_model_imatrix_data, imatrix) if imatrix else None
    if table is not None:
        params.imatrix = ctypes.cast(table.entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    _logs.errors = []
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        reason = _logs.reason()
        if reason and "requantiz" not in reason:
            raise CompressError(f"llama.cpp could not quantize to {file_type}: {reason}")
        raise CompressError(
            f"llama.cpp could not quantize to {file_type} (a packed layer would have to be rounded "
            "again; export as f16, or quantize with --sym --group-size 32)"
        )


@dataclass
class LlamaCppOutput:
    """What the harness reads from a forward: logits, and the cache handle to pass back."""

    logits: torch.Tensor
    cache: int | None = None  # positions already in llama.cpp's KV cache

    @property
    def past_key_values(self) -> int | None:
        return self.cache


class LlamaCppCausalLM(nn.Module):
    """A GGUF run by llama.cpp behind the forward the harness calls on transformers models.

    Each row of a batch is one sequence decoded from an empty KV cache; a `cache` handle continues
    the single sequence of the last call (greedy decoding at batch 1). Logits come back as float32
    for every position, as transformers returns them. The parameter-free module holds one empty
    anchor tensor so `next(model.parameters())` says CPU, as the harness asks.
    """

    def __init__(self, gguf_path: Path, config: Any, threads: int, kv_type: str = "f16") -> None:
        super().__init__()
        llama_cpp = binding()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.gguf_path = Path(gguf_path)
        self.threads = threads
        self.kv_type = kv_type
        limit = getattr(config, "max_position_embeddings", None) or 4096
        self.n_ctx = min(limit, 4096)
        self.n_batch = min(self.n_ctx, 512)
        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path),
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_ubatch=self.n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=False,
            type_k=KV_TYPES[kv_type],
            type_v=KV_TYPES[kv_type],
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        self.external_weight_bytes = self.gguf_path.stat().st_size  # mapped by llama.cpp, not torch
        # Freed with this module, or before the interpreter tears down the binding's globals.
        weakref.finalize(self, self.llm.close)

    def _decode(self, tokens: list[int]) -> np.ndarray:
        """Append `tokens` to the sequence; the logits of each, [len(tokens), vocab].

        Uses the binding's batch and context objects (`_batch`, `_ctx`; version pinned in
        tools/build_llama_cpp.sh): `Llama.eval` keeps logits only through an n_ctx × vocab buffer
        when `logits_all` is set (1.6 GB for SmolLM2 at 8k positions), this copies each chunk's."""
        if self.llm.n_tokens + len(tokens) > self.n_ctx:
            raise CompressError(f"llama.cpp context holds {self.n_ctx} positions; asked for more")
        parts = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self.llm._batch.set_batch(batch=chunk, n_past=self.llm.n_tokens, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            parts.append(logits.copy())
            self.llm.n_tokens += len(chunk)
        return np.concatenate(parts)

    def forward(
        self, input_ids: torch.Tensor, cache: int | None = None, use_cache: bool = False, **_: Any
    ) -> LlamaCppOutput:
        if cache is not None and input_ids.shape[0] != 1:
            raise CompressError("the llama.cpp runtime decodes one sequence at a time (batch 1)")
        rows = []
        for row in input_ids.tolist():
            if cache is None:
                self.llm._ctx.kv_cache_clear()
                self.llm.n_tokens = 0
            rows.append(torch.from_numpy(self._decode(row)))
        return LlamaCppOutput(torch.stack(rows), self.llm.n_tokens if use_cache else None)

    def runtime_description(self) -> dict[str, Any]:
        """What the report says about how this model ran (the harness adds it to `runtime`)."""
        return {
            "runtime": "llama.cpp",
            "dtype": "gguf",
            "threads": self.threads,
            "kv_cache": self.kv_type,
            "flash_attn": False,
            "batch_sizes": [1],
        }


def load_gguf_runtime(gguf_path: Path, config: Any, kv_type: str = "f16") -> LlamaCppCausalLM:
    """A GGUF as llama.cpp runs it, on as many threads as torch uses (recorded in the report)."""
    return LlamaCppCausalLM(gguf_path, config, torch.get_num_threads(), kv_type)


def temporary_gguf(directory: Path) -> Path:
    """A fresh path for an intermediate GGUF beside its final place (same file system)."""
    handle, name = tempfile.mkstemp(suffix=".gguf", prefix=".stage-", dir=directory)
    os.close(handle)
    return Path(name)
