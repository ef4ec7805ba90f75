"""Stacked LoRA: every adapter on the device in one tensor per layer, so a mixed batch costs one pass.

PEFT's per-sample path (`adapter_names`) loops over the distinct adapters of a batch in every LoRA layer:
index the rows, run A and B, scatter the result back. With 8 adapters that is 8 times the small kernels and
Python work per layer and step, and it is why a batch of 8 different experts ran at about half the speed of
8 requests on one. This module does what BGMV/Punica kernels do on GPUs, with plain batched matmuls: each
LoRA layer keeps `A` stacked as [slots, r, in] and `(B * scaling)ᵀ` as [slots, r, out] (slot 0 is all zeros:
the generalist; ranks are zero-padded to the largest), and a forward gathers each row's slot and runs two
`bmm`s. The cost no longer grows with the number of distinct adapters in the batch. When every row
uses the same adapter (one expert's traffic, or one request) there is nothing to gather: two plain
matmuls with that adapter's slice.

A mixture row (`AdapterMix`: k adapters with weights) gathers k slots. Its A slices, read together, are
one [k·r, in] matrix and its B slices one [out, k·r] matrix, so the same two `bmm`s over k·r columns, with
the hidden activations scaled by each component's weight, compute Σ wᵢ·Bᵢ·Aᵢ·x exactly: the derived LoRA
of rank Σr that vLLM is given (`derived_lora.py`). In a batch with any mixture row every row gathers k
slots; a single-adapter row pads with the generalist's zero slot at weight 0. B is kept transposed so
that the gather for k slots is one contiguous reshape.

PEFT still owns loading, validation and residency; the stacks are rebuilt (a few ms) on the model thread
after any adapter enters or leaves the model. Adapters with a LoRA variant (DoRA, ...) or a LoRA bias are
not stacked: the backend then falls back to PEFT's per-sample path for that model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from experts.backends.base import AdapterMix
from experts.errors import AdapterRejected

BASE_SLOT = 0
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a per-sample adapter_names list
_STACK = "_switchyard_lora_stack"
_PATCHED = "_switchyard_stacked_forward"


class StackedLora:
    """Owns the stacks of one PEFT model and the per-row slots of the forward pass in progress."""

    def __init__(self) -> None:
        self._stale = True
        self._supported = False
        self._slot_of: dict[str, int] = {}
        self.slots: torch.Tensor | None = None  # set only inside `rows()`, read by the patched layers
        self.weights: torch.Tensor | None = None  # [batch, k] when the batch has a mixture row (slots [batch, k])
        self.lora_off = False  # every row is the generalist: skip the LoRA maths entirely
        self.only_slot: int | None = None  # every row uses this one adapter: no gather needed

    def invalidate(self) -> None:
        """An adapter entered or left the model: rebuild before the next forward."""
        self._stale = True

    def ready(self, peft_model: torch.nn.Module) -> bool:
        """Rebuild if needed; False when some adapter cannot be stacked (use PEFT's path instead)."""
        if self._stale:
            self._supported = self._rebuild(peft_model)
            self._stale = False
        return self._supported

    @contextmanager
    def rows(self, adapters: Sequence[str | AdapterMix], device: torch.device) -> Iterator[None]:
        """Run the forward inside this block with row i using adapter `adapters[i]` (or the base), or the
        weighted mixture `adapters[i]`."""
        if any(isinstance(a, AdapterMix) for a in adapters):
            self._mixture_rows(adapters, device)
        else:
            slots = [self._slot_of.get(name, BASE_SLOT) for name in adapters]  # type: ignore[arg-type]
            self.lora_off = all(slot == BASE_SLOT for slot in slots)
            self.only_slot = slots[0] if len(set(slots)) == 1 else None
            self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        try:
            yield
        finally:
            self.slots, self.weights, self.lora_off, self.only_slot = None, None, False, None

    def _mixture_rows(self, adapters: Sequence[str | AdapterMix], device: torch.device) -> None:
        """Slots and weights [batch, k]: a mixture's components, or one adapter at weight 1, padded with the
        zero slot. A component that is not on the device is an error here, not a silent zero delta."""
        rows = [a.components if isinstance(a, AdapterMix) else ((a, 1.0),) for a in adapters]
        missing = sorted({key for row in rows for key, _ in row if key not in self._slot_of and key != BASE_ADAPTER})
        if missing:
            raise AdapterRejected(f"mixture components are not on the device: {', '.join(missing)}")
        k = max(len(row) for row in rows)
        padded = [list(row) + [(BASE_ADAPTER, 0.0)] * (k - len(row)) for row in rows]
        self.slots = torch.tensor([[self._slot_of.get(key, BASE_SLOT) for key, _ in row] for row in padded],
                                  dtype=torch.long, device=device)
        self.weights = torch.tensor([[weight for _, weight in row] for row in padded], device=device)
        self.lora_off, self.only_slot = False, None

    def _rebuild(self, peft_model: torch.nn.Module) -> bool:
        layers = [m for m in peft_model.modules() if isinstance(m, LoraLinear)]
        names = sorted({name for layer in layers for name in layer.lora_A})
        if any(_unstackable(layer, name) for layer in layers for name in layer.lora_A):
            return False
        self._slot_of = {name: i + 1 for i, name in enumerate(names)}
        rank = max((layer.lora_A[name].weight.shape[0] for layer in layers for name in layer.lora_A), default=1)
        for layer in layers:
            _stack_layer(layer, self._slot_of, rank)
            if not hasattr(layer, _PATCHED):
                setattr(layer, _PATCHED, True)
                layer.forward = _stacked_forward(layer, type(layer).forward.__get__(layer), self)
        return True


def _unstackable(layer: LoraLinear, name: str) -> bool:
    return name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None


def _stack_layer(layer: LoraLinear, slot_of: dict[str, int], rank: int) -> None:
    if not layer.lora_A:
        layer.__dict__[_STACK] = None
        return
    some = next(iter(layer.lora_A.values())).weight
    out_features = next(iter(layer.lora_B.values())).weight.shape[0]
    a = torch.zeros(len(slot_of) + 1, rank, some.shape[1], dtype=some.dtype, device=some.device)
    b_t = torch.zeros(len(slot_of) + 1, rank, out_features, dtype=some.dtype, device=some.device)
    with torch.no_grad():
        for name, lora_a in layer.lora_A.items():
            r = lora_a.weight.shape[0]
            a[slot_of[name], :r] = lora_a.weight
            b_t[slot_of[name], :r] = (layer.lora_B[name].weight * layer.scaling[name]).T
    layer.__dict__[_STACK] = (a, b_t)


def _stacked_forward(layer: LoraLinear, peft_forward: Callable[..., Any], bank: StackedLora) -> Callable[..., Any]:
    """The layer's forward: PEFT's own outside a stacked pass, gathered batched matmuls inside one."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        slots = bank.slots
        if slots is None:
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        stack = layer.__dict__.get(_STACK)
        if bank.lora_off or stack is None:
            return result
        a, b_t = stack
        if bank.weights is not None:
            return result + _mixture_delta(x, a, b_t, slots, bank.weights).view_as(result).to(result.dtype)
        if bank.only_slot is not None:  # one adapter for the whole batch: two plain matmuls, no gather
            delta = torch.matmul(torch.nn.functional.linear(x.to(a.dtype), a[bank.only_slot]), b_t[bank.only_slot])
            return result + delta.to(result.dtype)
        rows = x if x.dim() == 3 else x.unsqueeze(1)  # [batch, seq, in]
        hidden = torch.bmm(rows.to(a.dtype), a[slots].transpose(1, 2))  # [batch, seq, r]
        delta = torch.bmm(hidden, b_t[slots])  # [batch, seq, out]
        return result + delta.view_as(result).to(result.dtype)

    return forward


def _mixture_delta(x: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor, slots: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Σ wᵢ·Bᵢ·Aᵢ·x per row, as one rank-k·r LoRA: slots and weights are [batch, k]."""
    batch, k = slots.shape
    rank = a.shape[1]
    rows = x if x.dim() == 3 else x.unsqueeze(1)  # [batch, seq, in]
    a_rows = a[slots].reshape(batch, k * rank, a.shape[2])  # the components' A, stacked: [batch, k·r, in]
    hidden = torch.bmm(rows.to(a.dtype), a_rows.transpose(1, 2))  # [batch, seq, k·r]
    hidden = hidden * weights.to(a.dtype).repeat_interleave(rank, dim=1)[:, None, :]
    return torch.bmm(hidden, b_t[slots].reshape(batch, k * rank, b_t.shape[2]))  # [batch, seq, out]
