"""The embedded backend: one transformers causal LM with named PEFT LoRA adapters.

Every touch of the model (a batch step, a prefill, an adapter load or unload) runs on one dedicated
thread, so the model is never mutated while a forward pass is in flight and the event loop never
blocks. Concurrent requests are decoded together by continuous batching (`continuous_batching.py`): one
forward pass per step for every running request, each row naming its adapter through PEFT's per-sample
`adapter_names`; an admin load waits for at most one step.

Adapters live in three tiers (`residency.py`): injected into the model (device), kept as a state dict in
host memory, or only on disk. A request for an adapter that is not on the device brings it there first and
reports where it came from and how long that took.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from peft import PeftConfig, PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from experts.adapters import AdapterFiles, check_fits_model
from experts.backends.base import (
    GenerationChunk,
    GenerationRequest,
    OutputConstraint,
    Placement,
    TokenLogprob,
    check_prompt_fits,
    check_sampling_fits,
    constrained_finish,
)
from experts.backends.continuous_batching import BASE_ADAPTER, FINISHED, BatchScheduler, Row
from experts.backends.model_probe import ModelProbe
from experts.backends.prefix_cache import PrefixCache, template_prefix
from experts.backends.residency import Activation, ResidencyPlan, Tier
from experts.backends.sampling import IncrementalDecoder, PromptScores, SampledToken, StreamedText, TokenScores
from experts.backends.stacked_lora import StackedLora
from experts.errors import AdapterRejected, AdapterUnavailable, EngineUnavailable, MixtureRejected

if TYPE_CHECKING:
    from experts.backends.structured import GrammarCompiler, TokenMask

log = logging.getLogger(__name__)
T = TypeVar("T")
_TIER_COST = {Tier.DEVICE: 0, Tier.HOST: 1, Tier.DISK: 2}
HEALTH_PROBE_SECONDS = 5.0  # the base-model probe is re-run at most this often
# One job (a step, a prefill, an adapter load) holding the model thread this long means it is stuck: /health
# reports it, and a request whose rows get nothing for as long is failed rather than left waiting.
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class _HostCopy:
    """An adapter demoted from the device: its config and weights as CPU tensors."""

    config: PeftConfig
    state: dict[str, torch.Tensor]


class TransformersBackend:
    """transformers + PEFT on CPU or one GPU."""

    name = "transformers"

    def __init__(
        self, model_dir: Path, device: str, max_context: int, max_loras: int = 8, max_cpu_loras: int = 16,
        max_batch: int = 16, stacked_lora: bool = True, prefix_caching: bool = True,
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
        self._stacked = StackedLora() if stacked_lora else None
        self._prefixes = PrefixCache(template_prefix(self._tokenizer), max(32, max_batch)) if prefix_caching else None
        self._scheduler = BatchScheduler(
            self._executor, model=lambda: self._peft if self._peft is not None else self._base,
            uses_peft=lambda: self._peft is not None, max_batch=max_batch, stacked=self._stacked,
            prefixes=self._prefixes,
        )
        self._probe = ModelProbe(self._tokenizer, self._scheduler.forward, lambda: self._base)
        self._health: tuple[float, list[str]] = (time.monotonic(), [])
        self._probing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._probe_started = 0.0
        eos = self._base.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)
        self._vocab_size = int(self._base.get_output_embeddings().weight.shape[0])
        self._grammars: GrammarCompiler | None = None  # built by the first structured-output request
        self._grammars_lock = threading.Lock()

    @property
    def device(self) -> str:
        """Where the model's weights actually are (not where they were asked to be)."""
        return str(next(self._base.parameters()).device)

    async def _on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- adapters ---------------------------------------------------------------------------------

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        await self._on_model_thread(self._load_adapter, key, files)

    def _load_adapter(self, key: str, files: AdapterFiles) -> None:
        """Registration: validate, load onto the device and probe, so a bad adapter never becomes visible.

        The probe is one forward pass with a row on the new adapter and a row on the generalist, through
        the same path batches take (stacked LoRA included): the adapter's logits must be finite and the
        generalist's must equal those taken at start. Any failure removes the adapter again.
        """
        check_fits_model(files, self._base)
        try:
            self._inject_from_disk(key, files)
            self._probe.check_adapter(key)
        except Exception as exc:
            self._remove_from_model(key)
            if isinstance(exc, AdapterRejected):
                raise
            raise AdapterRejected(f"adapter could not be loaded into the base model: {exc}") from exc
        self._files[key] = files
        self._plan.register(key)
        self._plan.placed_on_device(key)
        self._enforce_limits()

    def unload_adapter(self, key: str) -> None:
        self._executor.submit(self._forget, key)

    def _forget(self, key: str) -> None:
        if self._prefixes is not None:
            self._prefixes.forget(key)
        self._remove_from_model(key)
        self._host.pop(key, None)
        self._files.pop(key, None)
        self._plan.forget(key)

    def residency(self, key: str) -> str | None:
        tier = self._plan.tier(key)
        return tier.value if tier is not None else None

    def tier_counts(self) -> dict[str, int]:
        return {tier.value: count for tier, count in self._plan.counts().items()}

    def _activate_all(self, keys: tuple[str, ...], mixture: bool) -> Activation:
        """Bring every adapter of a request to the device and pin them all (a mixture row needs all its
        components there at once); one activation for the record: the slowest tier, the summed time."""
        activations: list[Activation] = []
        try:
            for key in keys:
                activations.append(self._activate(key))
            if mixture and not (self._stacked is not None and self._peft is not None
                                and self._stacked.ready(self._peft)):
                raise MixtureRejected("adapter mixtures need stacked LoRA (the `stacked_lora` setting)")
        except BaseException:
            for key in keys[:len(activations)]:
                self._release(key)
            raise
        slowest = max(activations, key=lambda a: _TIER_COST[a.tier])
        return Activation(tier=slowest.tier, load_ms=sum(a.load_ms for a in activations))

    def _activate(self, key: str) -> Activation:
        """Bring `key` to the device (from host memory or disk) and pin it for one request."""
        tier = self._plan.tier(key)
        if tier is None:
            raise AdapterRejected(f"adapter {key!r} is not registered with the backend")
        started = time.perf_counter()
        try:
            if tier is Tier.HOST:
                self._inject_from_host(key, self._host.pop(key))
            elif tier is Tier.DISK:
                self._inject_from_disk(key, self._files[key])
        except Exception as exc:  # damaged or deleted files: undo the partial injection, report the key
            self._remove_from_model(key)
            raise AdapterUnavailable(key, str(exc)) from exc
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

    def _adapters_changed(self) -> None:
        if self._stacked is not None:
            self._stacked.invalidate()

    def _inject_from_disk(self, key: str, files: AdapterFiles) -> None:
        self._adapters_changed()
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(files.directory), adapter_name=key)
            self._peft.eval()
        else:
            self._peft.load_adapter(str(files.directory), adapter_name=key, low_cpu_mem_usage=True)

    def _inject_from_host(self, key: str, copy: _HostCopy) -> None:
        self._adapters_changed()
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
        self._adapters_changed()
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
        check_sampling_fits(request.sampling, self._vocab_size)
        stalled = self._stall()
        if stalled is not None:
            raise EngineUnavailable(stalled)
        self._watch()
        prompt_ids = await asyncio.to_thread(self._render_prompt, request)  # a long prompt never holds the loop
        check_prompt_fits(int(prompt_ids.shape[1]), request, self._max_context)
        prompt_ids = prompt_ids.to(self._device)
        grammar = None
        if request.sampling.constraint is not None:  # compiled off the model thread (cached per schema)
            grammar = await asyncio.to_thread(self._token_mask, request.sampling.constraint)
        keys = request.adapter_keys
        if not keys:
            async for chunk in self._decode(prompt_ids, request, grammar, Placement(self.name)):
                yield chunk
            return
        activation = await self._on_model_thread(self._activate_all, keys, request.mixture is not None)
        try:
            placement = Placement(self.name, activation.tier, activation.load_ms)
            async for chunk in self._decode(prompt_ids, request, grammar, placement):
                yield chunk
        finally:
            for key in keys:  # not awaited: also runs when the client went away
                self._executor.submit(self._release, key)

    def _token_mask(self, constraint: OutputConstraint) -> TokenMask:
        """A row's grammar state for `constraint` (compiled grammars are cached per schema). The engine is
        imported and set up for this tokenizer on first use, so a server that never sees a structured
        output never pays for it."""
        from experts.backends.structured import GrammarCompiler, TokenMask

        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self._tokenizer, self._vocab_size, self._eos_ids)
        compiled = self._grammars.compile(constraint)
        return TokenMask(compiled, self._grammars, constraint.shortest)

    async def _decode(self, prompt_ids: torch.Tensor, request: GenerationRequest, grammar: TokenMask | None,
                      placement: Placement) -> AsyncIterator[GenerationChunk]:
        """Join the running batch and turn its tokens for this request into text chunks; the first carries
        `placement`."""
        params = request.sampling
        prompt_tokens = int(prompt_ids.shape[1])
        row = Row(
            prompt_ids=prompt_ids, adapter=request.mixture or request.adapter_key or BASE_ADAPTER, sampling=params,
            generator=torch.Generator().manual_seed(params.seed) if params.seed is not None else None,
            eos_ids=self._eos_ids, loop=asyncio.get_running_loop(), queue=asyncio.Queue(), grammar=grammar,
        )
        self._scheduler.submit(row)
        text = StreamedText(params.stop)
        generated = IncrementalDecoder(self._tokenizer)
        finish: str = "length"
        scores: list[TokenLogprob] = []  # of tokens not yet reported in a chunk
        prompt_scores: tuple[TokenLogprob | None, ...] | None = None
        try:
            while True:
                item = await row.queue.get()
                if item is FINISHED:
                    break
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, PromptScores):
                    prompt_scores = (None, *(self._logprob(s) for s in item.scores))
                    continue
                assert isinstance(item, SampledToken)
                if item.id in self._eos_ids and not request.sampling.ignore_eos:
                    finish = "stop"
                    break
                if item.scores is not None:
                    scores.append(self._logprob(item.scores))
                if not generated.push(item.id):
                    continue  # no new character yet (part of a multi-byte one)
                delta = text.update(generated.text)
                if delta:
                    yield GenerationChunk(text=delta, prompt_tokens=prompt_tokens, completion_tokens=len(generated),
                                          logprobs=tuple(scores), prompt_logprobs=prompt_scores, placement=placement)
                    scores, prompt_scores, placement = [], None, None
                if text.stopped:
                    finish = "stop"
                    break
        finally:
            row.cancelled = True  # the model thread drops the row at its next step
        generated.finish()
        yield GenerationChunk(
            text=text.flush(generated.text),
            finish_reason=constrained_finish(finish, generated.text, params.constraint),  # type: ignore[arg-type]
            prompt_tokens=prompt_tokens,
            completion_tokens=len(generated),
            logprobs=tuple(scores),
            prompt_logprobs=prompt_scores,
            placement=placement,
        )

    def _watch(self) -> None:
        """Start the stall watchdog on this event loop, once: every `STALL_SECONDS / 4` it checks the model
        thread, and if one job holds it past `STALL_SECONDS`, fails every row waiting on it, rather than
        leave those requests waiting for as long as the job takes (a timeout per token would cost each
        token a task)."""
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watchdog_loop())

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(STALL_SECONDS / 4)
            stalled = self._stall()
            if stalled is not None:
                self._scheduler.fail_waiting(EngineUnavailable(stalled))

    def _stall(self) -> str | None:
        busy = self._scheduler.busy_for()
        if busy > STALL_SECONDS:
            return f"the model thread has been on one job for {busy:.0f} s"
        if self._probing is not None and time.monotonic() - self._probe_started > STALL_SECONDS:
            return f"the model thread has not answered the health probe for {STALL_SECONDS:.0f} s"
        return None

    def _logprob(self, scores: TokenScores) -> TokenLogprob:
        """Token ids as text, as OpenAI reports them (each token decoded alone)."""
        decode = self._tokenizer.decode
        return TokenLogprob(decode([scores.token]), scores.logprob,
                            tuple((decode([token]), logprob) for token, logprob in scores.top),
                            token_id=scores.token, rank=scores.rank, top_ids=tuple(token for token, _ in scores.top))

    def _render_prompt(self, request: GenerationRequest) -> torch.Tensor:
        """A raw prompt as it is, or the conversation through the model's chat template."""
        if request.prompt is not None:
            return self._tokenizer(request.prompt, return_tensors="pt")["input_ids"]
        return torch.tensor([request.template.render(self._tokenizer, request.messages)], dtype=torch.long)

    async def base_checksum(self) -> str:
        return await self._on_model_thread(self._probe.base_checksum)

    async def health(self) -> list[str]:
        """The base model's latest probe, and a stuck model thread. Never waits on the model thread: the probe
        runs there in the background, at most every `HEALTH_PROBE_SECONDS`, so /health answers at once even
        when a job holds the thread (which is then the problem reported)."""
        checked, problems = self._health
        if self._probing is None and time.monotonic() - checked > HEALTH_PROBE_SECONDS:
            self._probe_started = time.monotonic()
            self._probing = asyncio.get_running_loop().create_task(self._refresh_health())
        stalled = self._stall()
        return [*problems, stalled] if stalled is not None else problems

    async def _refresh_health(self) -> None:
        try:
            problems = await self._on_model_thread(self._probe.base_problems)
        except Exception as exc:  # a probe that cannot run is itself the problem
            problems = [f"the health probe failed: {type(exc).__name__}: {exc}"]
        finally:
            self._probing = None
        self._health = (time.monotonic(), problems)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
