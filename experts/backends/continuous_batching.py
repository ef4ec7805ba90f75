"""Continuous batching with mixed adapters for the transformers backend.

Every running request is a row of one batch. Each step is a single forward pass for all rows, whatever
adapter each row uses (stacked LoRA, or PEFT's per-sample `adapter_names`; `__base__` is the generalist).
Requests that arrive together are prefilled together, in one left-padded pass (the chat template's
fixed opening comes from a per-adapter prefix cache, `prefix_cache.py`), and join the batch between two
steps; a finished or abandoned row leaves it. Rows have different lengths, so the batch's KV
cache is left-padded and an attention mask plus explicit position ids keep every row's computation what
it would be alone.

Everything here runs on the backend's model thread: steps and admissions are queued jobs on the same
single-thread executor as adapter loads, so the model is never mutated mid-step. Results go back to
each request's asyncio queue through `call_soon_threadsafe`.

A row's failure is that row's alone. Whatever raises while one row is masked, sampled, accepted or scored
(`_advance`) fails that row with `RowFailed` and leaves the batch; a forward pass that raises fails the
rows of that pass. Anything else that escapes a job (`_guarded`) fails every row, running or waiting, and
resets the batch, rather than vanish in the executor's Future and leave rows waiting forever: a job's
exception used to do exactly that, so one poisoned row hung every later request. `busy_for` tells
`/health` when one job has held the model thread too long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from experts.backends.base import AdapterMix, SamplingParams
from experts.backends.prefix_cache import PrefixCache
from experts.backends.sampling import PromptScores, SampledToken, apply_penalties, sample_next_token, scores_of
from experts.backends.stacked_lora import BASE_ADAPTER, StackedLora
from experts.errors import MixtureRejected, RowFailed

if TYPE_CHECKING:
    from experts.backends.structured import TokenMask

log = logging.getLogger(__name__)
FINISHED = None  # sentinel pushed after the last token of a row


@dataclass(eq=False)
class Row:
    """One request inside the batch."""

    prompt_ids: torch.Tensor  # [1, prompt_len]
    adapter: str | AdapterMix  # PEFT adapter name, "__base__", or a mixture of adapter names (stacked only)
    sampling: SamplingParams
    generator: torch.Generator | None
    eos_ids: set[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    emitted: int = 0
    generated: list[int] = field(default_factory=list)  # the tokens so far (penalties read them)
    position: int = 0
    last_token: int = 0
    cancelled: bool = False
    done: bool = field(default=False)
    grammar: TokenMask | None = None  # structured outputs: the row's token mask

    def emit(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchScheduler:
    def __init__(self, executor: Executor, model: Callable[[], torch.nn.Module], uses_peft: Callable[[], bool],
                 max_batch: int, stacked: StackedLora | None = None, prefixes: PrefixCache | None = None) -> None:
        self._executor = executor
        self._model = model
        self._uses_peft = uses_peft
        self._stacked = stacked
        self.prefixes = prefixes
        self.max_batch = max_batch
        self._rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache_len]
        self._waiting: list[Row] = []
        self._joining: list[Row] = []  # taken from `_waiting`, being prefilled: in no other list until merged
        self._incoming: deque[Row] = deque()  # submitted from the event loop, not yet seen by the model thread
        self._step_queued = False
        self.steps = 0
        self.largest_batch = 0
        self.failed_rows = 0  # rows failed alone (`_advance`)
        self.batch_failures = 0  # jobs that failed every row (`_guarded`)
        self._busy_since: float | None = None  # when the running job started (monotonic); None: idle

    # -- called from the event loop -----------------------------------------------------------------

    def submit(self, row: Row) -> None:
        self._incoming.append(row)
        self._executor.submit(self._guarded, self._admit_incoming)

    def fail_waiting(self, error: Exception) -> None:
        """From the event loop, while the model thread is stuck: every row it holds gets `error` (the lists
        do not change meanwhile, and a row that gets it twice reads only the first)."""
        for row in [*self._rows, *self._joining, *self._waiting, *self._incoming]:
            if not row.done:
                row.cancelled = True
                row.emit(error)

    def busy_for(self) -> float:
        """Seconds the job on the model thread has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    # -- model thread ---------------------------------------------------------------------------------

    def _guarded(self, job: Callable[[], None]) -> None:
        """Run one scheduler job; an exception that escapes it fails every row and resets the batch."""
        self._busy_since = time.monotonic()
        try:
            job()
        except Exception as exc:
            log.exception("a batch job failed; failing every row it held")
            self.batch_failures += 1
            self._step_queued = False
            rows = [*self._rows, *self._joining, *self._waiting, *self._incoming]
            self._rows, self._joining, self._cache, self._mask, self._waiting = [], [], None, None, []
            self._incoming.clear()
            for row in rows:
                if not row.done:
                    row.done = True
                    row.emit(RowFailed(f"generation failed in the batch: {type(exc).__name__}: {exc}"))
        finally:
            self._busy_since = None

    def _advance(self, row: Row, logits: torch.Tensor, prompt_logits: torch.Tensor | None = None) -> None:
        """Score (with `prompt_logits`) and sample the row's next token; if anything raises, the row alone
        fails and leaves the batch at the next drop."""
        try:
            if prompt_logits is not None:  # position p's logits score the token at p + 1
                row.emit(PromptScores(tuple(scores_of(prompt_logits[j], int(token), row.sampling.prompt_logprobs)
                                            for j, token in enumerate(row.prompt_ids[0, 1:].tolist()))))
            self._accept(row, logits)
        except Exception as exc:
            log.warning("one row of the batch failed: %s: %s", type(exc).__name__, exc)
            self.failed_rows += 1
            row.done = True
            row.emit(RowFailed(f"generation failed for this request: {exc}"))

    def forward(self, adapters_of_rows: list[str | AdapterMix], **kwargs: Any) -> Any:
        """One forward pass for `rows`. With stacked LoRA (the default) every batch, mixed or not, is one
        pass of gathered matmuls (`stacked_lora.py`). Without it, PEFT's per-sample routing costs time in
        every LoRA layer, so a batch whose rows all use one adapter runs through PEFT's single-adapter path.
        (All-generalist batches keep the per-sample path there: `disable_adapter()` toggles every LoRA layer
        twice per step and measured slower.)"""
        model = self._model()
        adapters = set(adapters_of_rows)
        with torch.inference_mode():
            if not self._uses_peft():
                return model(use_cache=True, **kwargs)
            if self._stacked is not None and self._stacked.ready(model):
                with self._stacked.rows(adapters_of_rows, kwargs["input_ids"].device):
                    return model(use_cache=True, **kwargs)
            if any(isinstance(a, AdapterMix) for a in adapters):
                raise MixtureRejected("adapter mixtures need stacked LoRA (the `stacked_lora` setting, and no "
                                      "DoRA or LoRA-bias adapter loaded)")
            if len(adapters) == 1 and BASE_ADAPTER not in adapters:
                (only,) = adapters
                if model.active_adapter != only:
                    model.set_adapter(only)
                return model(use_cache=True, **kwargs)
            return model(use_cache=True, adapter_names=adapters_of_rows, **kwargs)

    def _admit_incoming(self) -> None:
        """Take every request submitted so far (an earlier job may already have taken them)."""
        while self._incoming:
            self._waiting.append(self._incoming.popleft())
        self._fill()

    def _fill(self) -> None:
        """Prefill as many waiting rows as the batch has room for, in one pass, and let them join."""
        for row in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(row)
            row.emit(FINISHED)
        room = self.max_batch - len(self._rows)
        if room <= 0 or not self._waiting:
            return
        joining, self._waiting = self._waiting[:room], self._waiting[room:]
        self._joining = joining
        prefixes = self.prefixes
        # Prompt log-probabilities need every prompt position computed, so those rows skip the cache.
        with_prefix = [r for r in joining if prefixes is not None and prefixes.covers(r.prompt_ids)
                       and r.sampling.prompt_logprobs is None]
        for group in (with_prefix, [r for r in joining if r not in with_prefix]):
            if group:
                self._prefill(group, len(prefixes) if group is with_prefix and prefixes is not None else 0)
        self._joining = []
        self._drop_finished()
        self._queue_step()

    def _prefill(self, rows: list[Row], cached: int) -> None:
        """One left-padded pass over `rows`' prompts; with `cached` > 0 every row's first `cached` tokens
        come from the prefix cache, and only the rest is computed (the padding then sits between the
        cached opening and the rest, which the mask and the explicit positions make invisible)."""
        lengths = [r.prompt_ids.shape[1] - cached for r in rows]
        longest = max(lengths)
        device = rows[0].prompt_ids.device
        mask = torch.cat([_left_pad(torch.ones(1, n, dtype=torch.long, device=device), longest, 1)
                          for n in lengths])
        positions = cached + (mask.cumsum(1) - 1).clamp(min=0)
        try:
            past = self._cached_prefixes(rows, device) if cached else None
            if cached:
                mask = torch.cat([torch.ones(len(rows), cached, dtype=torch.long, device=device), mask], dim=1)
            scored = any(r.sampling.prompt_logprobs is not None for r in rows)
            out = self.forward([r.adapter for r in rows],
                                input_ids=torch.cat([_left_pad(r.prompt_ids[:, cached:], longest, 1) for r in rows]),
                                attention_mask=mask, position_ids=positions, past_key_values=past,
                                logits_to_keep=0 if scored else 1)  # 0: every position (a [rows, len, vocab] tensor)
        except Exception as exc:  # reaches these requests only
            for row in rows:
                row.emit(exc)
            return
        cache = out.past_key_values
        with torch.inference_mode():  # padding columns hold zeros, as `_merge` pads; never attended to
            for layer in cache.layers:
                layer.keys.mul_(mask[:, None, :, None].to(layer.keys.dtype))
                layer.values.mul_(mask[:, None, :, None].to(layer.values.dtype))
        self._merge(rows, cache, mask)
        for i, row in enumerate(rows):
            row.position = cached + lengths[i]
            scored = row.sampling.prompt_logprobs is not None
            self._advance(row, out.logits[i, -1], out.logits[i, longest - lengths[i]:longest - 1] if scored else None)

    def _cached_prefixes(self, rows: list[Row], device: torch.device) -> DynamicCache:
        """The rows' cached openings as one batch cache, computing (in one pass) those not cached yet."""
        prefixes = self.prefixes
        assert prefixes is not None
        missing = list(dict.fromkeys(r.adapter for r in rows if prefixes.get(r.adapter) is None))
        if missing:
            ids = torch.tensor([prefixes.prefix_ids] * len(missing), device=device)
            out = self.forward(missing, input_ids=ids, attention_mask=torch.ones_like(ids),
                                position_ids=torch.arange(ids.shape[1], device=device).expand_as(ids),
                                logits_to_keep=1)
            for i, adapter in enumerate(missing):
                prefixes.put(adapter, [(layer.keys[i:i + 1].clone(), layer.values[i:i + 1].clone())
                                       for layer in out.past_key_values.layers])
        past = DynamicCache()
        for i, (keys, values) in enumerate(prefixes.batch([r.adapter for r in rows])):
            past.update(keys, values, i)
        return past

    def _merge(self, rows: list[Row], cache: DynamicCache, new_mask: torch.Tensor) -> None:
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, new_mask, list(rows)
            return
        assert self._mask is not None
        length = max(self._mask.shape[1], new_mask.shape[1])
        merged = DynamicCache()
        for i, (old, new) in enumerate(zip(self._cache.layers, cache.layers, strict=True)):
            keys = torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)], dim=0)
            values = torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)], dim=0)
            merged.update(keys, values, i)
        self._cache = merged
        self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(new_mask, length, 1)], dim=0)
        self._rows.extend(rows)
        self.largest_batch = max(self.largest_batch, len(self._rows))

    def _accept(self, row: Row, logits: torch.Tensor) -> None:
        """Sample the row's next token from its last position's logits, under its penalties and grammar."""
        raw, params = logits, row.sampling
        if params.penalised:
            logits = apply_penalties(logits, params, row.prompt_ids, row.generated, row.eos_ids)
        if row.grammar is not None:
            logits = logits if params.penalised else logits.float().clone()
            row.grammar.apply(logits, params.max_tokens - row.emitted, params.max_tokens)
        token = sample_next_token(logits, params, row.generator)
        if row.grammar is not None:
            row.grammar.accept(token)
        row.generated.append(token)
        row.last_token = token
        row.emitted += 1
        row.emit(SampledToken(token, scores_of(raw, token, params.logprobs) if params.logprobs is not None
                              else None))
        if ((token in row.eos_ids and not params.ignore_eos) or row.emitted >= params.max_tokens
                or (row.grammar is not None and row.grammar.complete)):
            row.done = True
            row.emit(FINISHED)

    def _queue_step(self) -> None:
        if self._rows and not self._step_queued:
            self._step_queued = True
            self._executor.submit(self._guarded, self._step)

    def _step(self) -> None:
        self._step_queued = False
        self._drop_finished()
        if not self._rows:
            return
        assert self._cache is not None and self._mask is not None
        rows = self._rows
        device = rows[0].prompt_ids.device
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=self._mask.dtype, device=device)], dim=1)
        try:
            out = self.forward(
                [r.adapter for r in rows],
                input_ids=torch.tensor([[r.last_token] for r in rows], device=device),
                position_ids=torch.tensor([[r.position] for r in rows], device=device),
                attention_mask=mask,
                past_key_values=self._cache,
            )
        except Exception as exc:  # fail every row of this batch cleanly rather than hang them
            for row in rows:
                row.emit(exc)
            self._rows, self._cache, self._mask = [], None, None
            return
        self._mask = mask
        self.steps += 1
        for i, row in enumerate(rows):
            row.position += 1
            self._advance(row, out.logits[i, -1])
        self._drop_finished()
        self._queue_step()

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not (r.done or r.cancelled)]
        for r in self._rows:
            if r.cancelled and not r.done:
                r.done = True
                r.emit(FINISHED)
        if len(keep) != len(self._rows):
            if not keep:
                self._rows, self._cache, self._mask = [], None, None
            else:
                assert self._cache is not None and self._mask is not None
                index = torch.tensor(keep, device=self._mask.device)
                self._cache.batch_select_indices(index)
                self._mask = self._mask[index]
                self._rows = [self._rows[i] for i in keep]
                self._trim()
        if self._waiting and len(self._rows) < self.max_batch:
            self._fill()

    def _trim(self) -> None:
        """Drop leading cache columns that are padding for every remaining row."""
        assert self._cache is not None and self._mask is not None
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start == 0:
            return
        trimmed = DynamicCache()
        for i, layer in enumerate(self._cache.layers):
            trimmed.update(layer.keys[:, :, start:], layer.values[:, :, start:], i)
        self._cache = trimmed
        self._mask = self._mask[:, start:]
