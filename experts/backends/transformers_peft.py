"""The embedded backend: one transformers causal LM with named PEFT LoRA adapters.

Every touch of the model (a decode step, an adapter load or unload) runs on one dedicated thread, so the
model is never mutated while a forward pass is in flight and the event loop never blocks. Requests decode
one token per job on that thread, so concurrent requests interleave fairly and an admin load waits for at
most one step. Each forward names its adapter through PEFT's per-sample `adapter_names`, which is what
lets a later change batch requests for different adapters into one forward pass.

Adapters live in three tiers (`residency.py`): injected into the model (device), kept as a state dict in
host memory, or only on disk. A request for an adapter that is not on the device brings it there first and
reports where it came from and how long that took.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftConfig, PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from experts.adapters import AdapterFiles, check_fits_model
from experts.backends.base import GenerationChunk, GenerationRequest
from experts.backends.residency import Activation, ResidencyPlan, Tier
from experts.backends.sampling import StreamedText, sample_next_token
from experts.errors import AdapterRejected, PromptTooLong

log = logging.getLogger(__name__)
T = TypeVar("T")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a per-sample adapter_names list


@dataclass(frozen=True)
class _HostCopy:
    """An adapter demoted from the device: its config and weights as CPU tensors."""

    config: PeftConfig
    state: dict[str, torch.Tensor]


@dataclass
class _DecodeState:
    """Per-request decode state; only ever touched on the model thread."""

    prompt_ids: torch.Tensor
    generated: list[int] = field(default_factory=list)
    past: Any = None


class TransformersBackend:
    """transformers + PEFT on CPU or one GPU."""

    name = "transformers"

    def __init__(
        self, model_dir: Path, device: str, max_context: int, max_loras: int = 8, max_cpu_loras: int = 16
    ) -> None:
        self.model_id = str(model_dir)
        self._device = torch.device(device)
        self._max_context = max_context
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-model")
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self._device)
        self._base.eval()
        self._peft: PeftModel | None = None
        self._plan = ResidencyPlan(max_loras, max_cpu_loras)
        self._files: dict[str, AdapterFiles] = {}
        self._host: dict[str, _HostCopy] = {}
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
        """Registration: validate and load onto the device, so a bad adapter never becomes visible."""
        check_fits_model(files, self._base)
        try:
            self._inject_from_disk(key, files)
        except Exception as exc:
            self._remove_from_model(key)
            raise AdapterRejected(f"adapter could not be loaded into the base model: {exc}") from exc
        self._files[key] = files
        self._plan.register(key)
        self._plan.placed_on_device(key)
        self._enforce_limits()

    def unload_adapter(self, key: str) -> None:
        self._executor.submit(self._forget, key)

    def _forget(self, key: str) -> None:
        self._remove_from_model(key)
        self._host.pop(key, None)
        self._files.pop(key, None)
        self._plan.forget(key)

    def residency(self, key: str) -> str | None:
        tier = self._plan.tier(key)
        return tier.value if tier is not None else None

    def tier_counts(self) -> dict[str, int]:
        return {tier.value: count for tier, count in self._plan.counts().items()}

    def _activate(self, key: str) -> Activation:
        """Bring `key` to the device (from host memory or disk) and pin it for one request."""
        tier = self._plan.tier(key)
        if tier is None:
            raise AdapterRejected(f"adapter {key!r} is not registered with the backend")
        started = time.perf_counter()
        if tier is Tier.HOST:
            self._inject_from_host(key, self._host.pop(key))
        elif tier is Tier.DISK:
            self._inject_from_disk(key, self._files[key])
        self._plan.placed_on_device(key)
        self._plan.pin(key)
        self._enforce_limits()
        return Activation(tier=tier, load_ms=(time.perf_counter() - started) * 1000.0)

    def _release(self, key: str) -> None:
        self._plan.unpin(key)
        self._enforce_limits()

    def _enforce_limits(self) -> None:
        for key in self._plan.demotions():
            assert self._peft is not None
            state = get_peft_model_state_dict(self._peft, adapter_name=key, save_embedding_layers=False)
            self._host[key] = _HostCopy(self._peft.peft_config[key], {k: v.detach().to("cpu", copy=True)
                                                                      for k, v in state.items()})
            self._remove_from_model(key)
        for key in self._plan.drops():
            self._host.pop(key, None)

    def _inject_from_disk(self, key: str, files: AdapterFiles) -> None:
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(files.directory), adapter_name=key)
            self._peft.eval()
        else:
            self._peft.load_adapter(str(files.directory), adapter_name=key, low_cpu_mem_usage=True)

    def _inject_from_host(self, key: str, copy: _HostCopy) -> None:
        if self._peft is None:
            self._peft = PeftModel(self._base, copy.config, adapter_name=key, low_cpu_mem_usage=True)
            self._peft.eval()
        else:
            self._peft.add_adapter(key, copy.config, low_cpu_mem_usage=True)
        set_peft_model_state_dict(self._peft, copy.state, adapter_name=key, low_cpu_mem_usage=True)

    def _remove_from_model(self, key: str) -> None:
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

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        params = request.sampling
        prompt_ids = self._render_prompt(request.messages)
        prompt_tokens = int(prompt_ids.shape[1])
        if request.max_prompt_tokens is not None and prompt_tokens > request.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt of {prompt_tokens} tokens exceeds this server's limit of {request.max_prompt_tokens}")
        if prompt_tokens + params.max_tokens > self._max_context:
            raise PromptTooLong(
                f"prompt of {prompt_tokens} tokens plus max_tokens={params.max_tokens} exceeds the "
                f"context of {self._max_context} tokens"
            )
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        state = _DecodeState(prompt_ids=prompt_ids.to(self._device))
        key = request.adapter_key
        if key is None:
            async for chunk in self._decode(state, request, generator, prompt_tokens):
                yield chunk
            return
        activation = await self._on_model_thread(self._activate, key)
        try:
            yield GenerationChunk(text="", activation=activation)
            async for chunk in self._decode(state, request, generator, prompt_tokens):
                yield chunk
        finally:
            self._executor.submit(self._release, key)  # not awaited: also runs when the client went away

    async def _decode(
        self, state: _DecodeState, request: GenerationRequest, generator: torch.Generator | None, prompt_tokens: int
    ) -> AsyncIterator[GenerationChunk]:
        params = request.sampling
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
                yield GenerationChunk(text=delta, prompt_tokens=prompt_tokens, completion_tokens=len(state.generated))
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
