"""Sampling engines for teacher generation: transformers' `generate` (default) or vLLM.

Both take token-id prompts and return token-id completions, `samples_per_prompt` per prompt in
prompt order, so the dataset writer does not care which ran. vLLM is an optional extra
(`pip install 'compress[vllm]'`): it samples much faster on a GPU server; the teacher's top-k
log-probabilities are still computed by the transformers model, so both engines store the same
numbers.
"""

from __future__ import annotations

from typing import Protocol

import torch

from compress.distill.config import GenerateConfig
from compress.errors import CompressError
from compress.modeling import ModelSource


class CompletionEngine(Protocol):
    eos_ids: set[int]

    def complete(self, prompts: list[list[int]], config: GenerateConfig, seed: int) -> list[list[int]]: ...


def _eos_ids(model_config, tokenizer) -> set[int]:
    ids = getattr(model_config, "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


class HFEngine:
    """Batched `model.generate` with left padding (prompts of unequal length share a batch)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.eos_ids = _eos_ids(model.config, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def _left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        return ids, mask

    @torch.no_grad()
    def complete(self, prompts: list[list[int]], config: GenerateConfig, seed: int) -> list[list[int]]:
        from transformers import set_seed

        set_seed(seed)
        device = next(self.model.parameters()).device
        sampling = (
            {"do_sample": True, "temperature": config.sampling_temperature, "top_p": config.top_p, "top_k": 0}
            if config.do_sample
            else {"do_sample": False}
        )
        completions: list[list[int]] = []
        batch_prompts = max(1, config.generate_batch_size // config.samples_per_prompt)
        for start in range(0, len(prompts), batch_prompts):
            ids, mask = self._left_padded(prompts[start : start + batch_prompts])
            output = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=config.max_new_tokens,
                num_return_sequences=config.samples_per_prompt,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids) or None,
                **sampling,
            )
            completions.extend(output[:, ids.shape[1] :].cpu().tolist())
        return completions


def check_engine(config: GenerateConfig) -> None:
    """Fail before any work when the chosen engine is not installed."""
    if config.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise CompressError("--engine vllm needs vLLM: pip install 'compress[vllm]'") from exc


class VLLMEngine:
    """vLLM's offline `LLM.generate` over token-id prompts."""

    def __init__(self, source: ModelSource, tokenizer, config: GenerateConfig, trust_remote_code: bool):
        from vllm import LLM

        self.llm = LLM(model=str(source.path), seed=config.seed, trust_remote_code=trust_remote_code)
        self.eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()

    def complete(self, prompts: list[list[int]], config: GenerateConfig, seed: int) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=config.samples_per_prompt,
            temperature=config.sampling_temperature if config.do_sample else 0.0,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            seed=seed,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        return [list(choice.token_ids) for output in outputs for choice in output.outputs]


def open_engine(
    config: GenerateConfig, source: ModelSource, model, tokenizer, trust_remote_code: bool
) -> CompletionEngine:
    if config.engine == "vllm":
        return VLLMEngine(source, tokenizer, config, trust_remote_code)
    return HFEngine(model, tokenizer)
