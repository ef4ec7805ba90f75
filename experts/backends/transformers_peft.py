"""The embedded backend: one transformers causal LM with named PEFT LoRA adapters.

Every touch of the model (a decode step, an adapter load or unload) runs on one dedicated thread, so the
model is never mutated while a forward pass is in flight and the event loop never blocks. Requests decode
one token per job on that thread, so concurrent requests interleave fairly and an admin load waits for at
most one step. Each forward names its adapter through PEFT's per-sample `adapter_names`, which is what
lets a later change batch requests for different adapters into one forward pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from experts.adapters import AdapterFiles, check_fits_model
from experts.backends.base import GenerationChunk, GenerationRequest
from experts.backends.sampling import StreamedText, sample_next_token
from experts.errors import AdapterRejected, PromptTooLong

log = logging.getLogger(__name__)
T = TypeVar("T")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a per-sample adapter_names list


@dataclass
class _DecodeState:
    """Per-request decode state; only ever touched on the model thread."""

    prompt_ids: torch.Tensor
    generated: list[int] = field(default_factory=list)
    past: Any = None


class TransformersBackend:
    """transformers + PEFT on CPU or one GPU."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str, max_context: int) -> None:
        self.model_id = str(model_dir)
        self._device = torch.device(device)
        self._max_context = max_context
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-model")
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self._device)
        self._base.eval()
        self._peft: PeftModel | None = None
        eos = self._base.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)

    async def _on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- adapters ---------------------------------------------------------------------------------

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        await self._on_model_thread(self._load_adapter, key, files)

    def _load_adapter(self, key: str, files: AdapterFiles) -> None:
        check_fits_model(files, self._base)
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(files.directory), adapter_name=key)
                self._peft.eval()
            else:
                self._peft.load_adapter(str(files.directory), adapter_name=key)
        except Exception as exc:
            self._unload_adapter(key)
            raise AdapterRejected(f"adapter could not be loaded into the base model: {exc}") from exc

    def unload_adapter(self, key: str) -> None:
        self._executor.submit(self._unload_adapter, key)

    def _unload_adapter(self, key: str) -> None:
        peft = self._peft
        if peft is None or key not in peft.peft_config:
            return
        remaining = [name for name in peft.peft_config if name != key]
        if not remaining:
            # PEFT cannot run with zero adapters; strip the LoRA layers and go back to the plain model.
            self._base = peft.unload()
            self._peft = None
            return
        if peft.active_adapter == key:
            peft.set_adapter(remaining[0])
        peft.delete_adapter(key)

    def loaded_adapters(self) -> list[str]:
        return list(self._peft.peft_config) if self._peft is not None else []

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        params = request.sampling
        prompt_ids = self._render_prompt(request.messages)
        prompt_tokens = int(prompt_ids.shape[1])
        if prompt_tokens + params.max_tokens > self._max_context:
            raise PromptTooLong(
                f"prompt of {prompt_tokens} tokens plus max_tokens={params.max_tokens} exceeds the "
                f"context of {self._max_context} tokens"
            )
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        state = _DecodeState(prompt_ids=prompt_ids.to(self._device))
        text = StreamedText(params.stop)
        decoded = ""
        finish: str = "length"
        for _ in range(params.max_tokens):
            token = await self._on_model_thread(self._decode_step, state, request, generator)
            if token in self._eos_ids:
                finish = "stop"
                break
            state.generated.append(token)
            decoded = self._tokenizer.decode(state.generated, skip_special_tokens=True)
            delta = text.update(decoded)
            if delta:
                yield GenerationChunk(text=delta)
            if text.stopped:
                finish = "stop"
                break
        yield GenerationChunk(
            text=text.flush(decoded),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=prompt_tokens,
            completion_tokens=len(state.generated),
        )

    def _render_prompt(self, messages: Any) -> torch.Tensor:
        encoded = self._tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return encoded["input_ids"]

    def _decode_step(
        self, state: _DecodeState, request: GenerationRequest, generator: torch.Generator | None
    ) -> int:
        if state.past is None:
            input_ids = state.prompt_ids
        else:
            input_ids = torch.tensor([[state.generated[-1]]], device=self._device)
        kwargs: dict[str, Any] = {}
        model: torch.nn.Module = self._base
        if self._peft is not None:
            model = self._peft
            kwargs["adapter_names"] = [request.adapter_key or BASE_ADAPTER]
        elif request.adapter_key is not None:
            raise AdapterRejected(f"adapter {request.adapter_key!r} is not loaded")
        with torch.inference_mode():
            out = model(input_ids=input_ids, past_key_values=state.past, use_cache=True, **kwargs)
        state.past = out.past_key_values
        return sample_next_token(out.logits[0, -1], request.sampling, generator)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
