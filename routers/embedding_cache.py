"""A bounded LRU of query embeddings, keyed by the exact text.

Conversation routing reads every earlier user turn of a conversation, and a chat client resends them all
on every request: without a cache a 20-turn conversation would cost 20 encodes. Real traffic also repeats
whole queries (FAQ-style questions, retries). One cache serves the encoder for routing; its hits and
misses are counted for the metrics. Safe under concurrent use (a lock around the dictionary; encoding
runs outside it).

Bounded twice: by entries and by bytes (each entry's text and vector), so long texts cannot grow it past
`max_bytes` whatever their number. Routing cuts texts to what it reads before they get here
(`routers.conversation.routing_text`).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

Encode = Callable[[list[str]], torch.Tensor]
EMBEDDING_CACHE_BYTES = 64 * 2**20  # 10,000 full-length turns (4,000 characters and a 384-d vector) fit


class EmbeddingCache:
    def __init__(self, capacity: int, max_bytes: int = EMBEDDING_CACHE_BYTES) -> None:
        if capacity < 0 or max_bytes < 0:
            raise ValueError("capacity and max_bytes must not be negative")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0  # the entries' texts and vectors, as `_cost` counts them
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """The cached vector of each text, or None; a hit becomes the most recently used entry."""
        out: list[torch.Tensor | None] = []
        with self._lock:
            for text in texts:
                vector = self._entries.get(text)
                if vector is not None:
                    self._entries.move_to_end(text)
                out.append(vector)
            found = sum(v is not None for v in out)
            self.hits += found
            self.misses += len(out) - found
        return out

    @staticmethod
    def _cost(text: str, vector: torch.Tensor) -> int:
        return sys.getsizeof(text) + vector.element_size() * vector.nelement()

    def store(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                cost = self._cost(text, vector)
                if cost > self.max_bytes:
                    continue
                old = self._entries.pop(text, None)
                if old is not None:
                    self.bytes -= self._cost(text, old)
                self._entries[text] = vector
                self.bytes += cost
            while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
                text, vector = self._entries.popitem(last=False)
                self.bytes -= self._cost(text, vector)

    def forget(self, text: str) -> None:
        with self._lock:
            vector = self._entries.pop(text, None)
            if vector is not None:
                self.bytes -= self._cost(text, vector)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def get_or_encode(self, texts: Sequence[str], encode: Encode) -> torch.Tensor:
        """[len(texts), dim]: cached rows, and the misses encoded together in one call (synchronously)."""
        if not texts:
            raise ValueError("nothing to encode")
        found = self.lookup(texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        if missing:
            fresh = encode(missing)
            self.store(missing, fresh)
            by_text = dict(zip(missing, fresh, strict=True))
            found = [v if v is not None else by_text[t] for t, v in zip(texts, found, strict=True)]
        return torch.stack([v for v in found if v is not None])
