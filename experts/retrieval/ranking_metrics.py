"""Retrieval quality metrics at the document level, with binary relevance.

Passages are chunks; a query's relevant items are documents. A ranking of chunks is first reduced to the
ranking of the documents they come from (first occurrence wins), so five chunks of one page count once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def document_ranking(doc_ids: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for doc_id in doc_ids:
        seen.setdefault(doc_id, None)
    return list(seen)


def recall_at_k(ranking: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant documents found in the first k."""
    if not relevant:
        return 0.0
    return len(set(ranking[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranking: Sequence[str], relevant: set[str], k: int) -> float:
    """Normalised discounted cumulative gain: gain 1 at rank r counts 1 / log2(r + 1); the ideal ranking
    puts every relevant document first."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], start=1) if doc in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0
