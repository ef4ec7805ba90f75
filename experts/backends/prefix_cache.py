"""Prefix caching for the chat template's fixed opening, per adapter.

Every chat prompt opens with the same tokens: SmolLM2's template puts a default system message and the
user turn's header (23 tokens) before the question, more than half of a short prompt. On CPU a prefill
is compute-bound, so recomputing that opening for every request is most of its time to first token. This
keeps the opening's KV cache per adapter and prefills only the rest.

Per adapter, because a LoRA on the attention projections changes the keys and values (vLLM's prefix
cache keys its blocks by LoRA id for the same reason). Adapter keys name one version of an expert, so an
entry can never serve a replaced adapter's weights; it is dropped when its adapter is unloaded, and the
least recently used entry goes past `max_entries` (an entry is ~1 MB for SmolLM2-135M).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from experts.backends.base import AdapterMix

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [1, kv_heads, prefix_len, head_dim]


def template_prefix(tokenizer: Any) -> list[int]:
    """The token ids every single-user-turn chat prompt starts with (empty if there is no template).

    Rendered twice with different questions; the common opening, minus its last token, because a BPE
    merge can fuse the header's last token with the first characters of some question.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return []
    first, second = (tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=True)["input_ids"]
                     for text in ("Alpha?", "Zulu!"))
    common = 0
    while common < min(len(first), len(second)) and first[common] == second[common]:
        common += 1
    return list(first[:max(0, common - 1)])


class PrefixCache:
    def __init__(self, prefix_ids: Sequence[int], max_entries: int = 32) -> None:
        self.prefix_ids = list(prefix_ids)
        self._prefix = torch.tensor(self.prefix_ids, dtype=torch.long)
        self._entries: OrderedDict[Hashable, list[LayerKV]] = OrderedDict()
        self._max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.prefix_ids)

    def covers(self, prompt_ids: torch.Tensor) -> bool:
        """Whether a [1, n] prompt starts with the prefix and has at least one token after it."""
        n = len(self.prefix_ids)
        return n > 0 and prompt_ids.shape[1] > n and torch.equal(prompt_ids[0, :n].cpu(), self._prefix)

    def get(self, adapter: Hashable) -> list[LayerKV] | None:
        entry = self._entries.get(adapter)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(adapter)
        self.hits += 1
        return entry

    def put(self, adapter: Hashable, layers: list[LayerKV]) -> None:
        self._entries[adapter] = layers
        self._entries.move_to_end(adapter)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, adapter: str) -> None:
        """Drop an unloaded adapter's entry, and those of the mixtures it was part of."""
        for key in [k for k in self._entries if k == adapter or (isinstance(k, AdapterMix) and adapter in k.keys)]:
            del self._entries[key]

    def batch(self, adapters: Sequence[Hashable]) -> list[LayerKV]:
        """The cached prefixes of `adapters` (all present), stacked row by row, per layer."""
        entries = [self._entries[a] for a in adapters]
        return [(torch.cat([e[i][0] for e in entries]), torch.cat([e[i][1] for e in entries]))
                for i in range(len(entries[0]))]
