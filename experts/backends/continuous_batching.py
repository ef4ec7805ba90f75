"""Continuous batching with mixed adapters for the transformers backend.

Every running request is a row of one batch. Each step is a single forward pass for all rows, whatever
adapter each row uses (stacked LoRA, or PEFT's per-sample `adapter_names`; `__base__` is the generalist).
Requests that arrive together are prefilled together, in one left-padded pass, and join the batch
between two steps; a finished or abandoned row leaves it. Rows have different lengths, so the batch's KV
cache is left-padded and an attention mask plus explicit position ids keep every row's computation what
it would be alone.

Everything here runs on the backend's model thread: steps and admissions are queued jobs on the same
single-thread executor as adapter loads, so the model is never mutated mid-step. Results go back to
each request's asyncio queue through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from experts.backends.base import SamplingParams
from experts.backends.sampling import sample_next_token
from experts.backends.stacked_lora import StackedLora

FINISHED = None  # sentinel pushed after the last token of a row
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a per-sample adapter_names list


@dataclass(eq=False)
class Row:
    """One request inside the batch."""

    prompt_ids: torch.Tensor  # [1, prompt_len]
    adapter: str  # PEFT adapter name, or "__base__"
    sampling: SamplingParams
    generator: torch.Generator | None
    eos_ids: set[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    emitted: int = 0
    position: int = 0
    last_token: int = 0
    cancelled: bool = False
    done: bool = field(default=False)

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
                 max_batch: int, stacked: StackedLora | None = None) -> None:
        self._executor = executor
        self._model = model
        self._uses_peft = uses_peft
        self._stacked = stacked
        self.max_batch = max_batch
        self._rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache_len]
        self._waiting: list[Row] = []
        self._incoming: deque[Row] = deque()  # submitted from the event loop, not yet seen by the model thread
        self._step_queued = False
        self.steps = 0
        self.largest_batch = 0

    # -- called from the event loop -----------------------------------------------------------------

    def submit(self, row: Row) -> None:
        self._incoming.append(row)
        self._executor.submit(self._admit_incoming)

    # -- model thread ---------------------------------------------------------------------------------

    def _forward(self, rows: list[Row], **kwargs: Any) -> Any:
        """One forward pass for `rows`. With stacked LoRA (the default) every batch, mixed or not, is one
        pass of gathered matmuls (`stacked_lora.py`). Without it, PEFT's per-sample routing costs time in
        every LoRA layer, so a batch whose rows all use one adapter runs through PEFT's single-adapter path.
        (All-generalist batches keep the per-sample path there: `disable_adapter()` toggles every LoRA layer
        twice per step and measured slower.)"""
        model = self._model()
        adapters = {r.adapter for r in rows}
        with torch.inference_mode():
            if not self._uses_peft():
                return model(use_cache=True, **kwargs)
            if self._stacked is not None and self._stacked.ready(model):
                with self._stacked.rows([r.adapter for r in rows], kwargs["input_ids"].device):
                    return model(use_cache=True, **kwargs)
            if len(adapters) == 1 and BASE_ADAPTER not in adapters:
                (only,) = adapters
                if model.active_adapter != only:
                    model.set_adapter(only)
                return model(use_cache=True, **kwargs)
            return model(use_cache=True, adapter_names=[r.adapter for r in rows], **kwargs)

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
        lengths = [r.prompt_ids.shape[1] for r in joining]
        longest = max(lengths)
        device = joining[0].prompt_ids.device
        mask = torch.cat([_left_pad(torch.ones(1, n, dtype=torch.long, device=device), longest, 1)
                          for n in lengths])
        try:
            out = self._forward(joining, input_ids=torch.cat([_left_pad(r.prompt_ids, longest, 1) for r in joining]),
                                attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
        except Exception as exc:  # reaches these requests only
            for row in joining:
                row.emit(exc)
            return
        cache = out.past_key_values
        with torch.inference_mode():  # padding columns hold zeros, as `_merge` pads; never attended to
            for layer in cache.layers:
                layer.keys.mul_(mask[:, None, :, None].to(layer.keys.dtype))
                layer.values.mul_(mask[:, None, :, None].to(layer.values.dtype))
        self._merge(joining, cache, mask)
        for i, row in enumerate(joining):
            row.position = lengths[i]
            self._accept(row, out.logits[i, -1])
        self._drop_finished()
        self._queue_step()

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
        token = sample_next_token(logits, row.sampling, row.generator)
        row.last_token = token
        row.emitted += 1
        row.emit(token)
        if (token in row.eos_ids and not row.sampling.ignore_eos) or row.emitted >= row.sampling.max_tokens:
            row.done = True
            row.emit(FINISHED)

    def _queue_step(self) -> None:
        if self._rows and not self._step_queued:
            self._step_queued = True
            self._executor.submit(self._step)

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
            out = self._forward(
                rows,
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
            self._accept(row, out.logits[i, -1])
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
