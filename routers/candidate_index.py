"""Exact example-based scoring at catalogue scale: approximate candidates, exact scores, a completeness check.

Scoring every example of 10,000 experts reads a 154 MB matrix per query; the cost grows with the
catalogue. Here a query costs about the same at 10 or 100,000 experts:

1. **Candidates.** An HNSW graph (hnswlib) over the distinct example vectors of every expert returns the
   `K` examples nearest the query; the experts that own them are the candidates. Identical examples
   (cloned experts, shared FAQ questions) are stored once, with all their owners.
2. **Exact scores.** Each candidate is scored exactly as the exhaustive policy scores it (top-k cosine
   similarity of its own examples, aggregated), in fp32: the decision and the score in the record are
   those of the exhaustive search whenever the right expert is a candidate.
3. **Completeness check.** An expert that is not a candidate has no example closer than the `K`-th one
   found, so its score (a mean or max of its similarities) is at most that similarity. When the runner-up
   candidate scores at least that much, no other expert can enter the top two, and the answer is the
   exhaustive one (up to the graph's recall). Otherwise `K` grows fourfold, up to `max_candidates`.

Updates are incremental: the graph and the example store (`ExampleStore`) are shared by every snapshot's
index and only grow by the examples of new expert versions. A snapshot's index (`CandidateIndex`) is an
immutable list of entries; building the next one reuses the entries of unchanged experts (same vectors
tensor) and adds only the new ones. Entries are reference-counted by the indices that hold them and
removed from the store when the last such index is garbage-collected, so a request still routing on an
older snapshot never sees its experts disappear underneath it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import hnswlib
import numpy as np
import torch

from routers.base import ExpertVectors, RoutingIndex


@dataclass(frozen=True)
class SearchParams:
    """`candidates`: examples fetched first (K). `max_candidates`: the most K may grow to when the
    completeness check fails. `ef`: the graph's search breadth (at least K; higher: better recall)."""

    candidates: int = 16
    max_candidates: int = 1024
    ef: int = 128


class ExampleStore:
    """The distinct example vectors of every indexed expert version, their owners, and an HNSW graph over them.

    Thread-safe: one lock guards the graph (hnswlib does not allow a search during an insert) and the
    tables. Vector ids are reused after their last owner goes, so memory follows the live catalogue. Each
    entry's vector ids sit in one flat array (offset, length), so a query gathers its candidates' examples
    with a few vectorised reads; space left by dropped entries is reclaimed when it exceeds the live part.
    """

    def __init__(self, dim: int, capacity: int = 1024, m: int = 16, ef_construction: int = 200) -> None:
        self.dim = dim
        self._lock = threading.RLock()  # re-entrant: a finaliser may run while this thread holds it
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(max_elements=capacity, M=m, ef_construction=ef_construction)
        self._graph.set_num_threads(1)
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._id_of: dict[bytes, int] = {}  # vector bytes -> vector id
        self._owners: dict[int, list[int]] = {}  # vector id -> entry ids owning it
        self._free: list[int] = []
        self._next_id = 0
        # entry id -> its vector ids, as _flat[_offset[e]:_offset[e] + _length[e]]; _refs: indices holding it
        self._flat = np.zeros(4096, dtype=np.int64)
        self._used = 0
        self._live = 0
        self._offset = np.zeros(1024, dtype=np.int64)
        self._length = np.zeros(1024, dtype=np.int64)
        self._refs = np.zeros(1024, dtype=np.int32)
        self._next_entry = 0

    # -- writes -----------------------------------------------------------------------------------

    def add_entries(self, experts: Sequence[torch.Tensor]) -> list[int]:
        """Index expert versions' example vectors (each [n, dim]); returns their entry ids, which stay until
        the indices that `retain` them `release` them. New examples go into the graph in one call, on every
        core (a catalogue restored at start is one call)."""
        with self._lock:
            entries, fresh_ids, fresh_rows = [], [], []
            for vectors in experts:
                entry = self._new_entry()
                ids = []
                for row in np.ascontiguousarray(vectors.detach().float().cpu().numpy()):
                    key = row.tobytes()
                    vid = self._id_of.get(key)
                    if vid is None:
                        vid = self._allocate()
                        self._id_of[key] = vid
                        self._vectors[vid] = row
                        self._owners[vid] = []
                        fresh_ids.append(vid)
                        fresh_rows.append(row)
                    if not self._owners[vid] or self._owners[vid][-1] != entry:  # an expert may repeat one
                        self._owners[vid].append(entry)
                    ids.append(vid)
                self._place(entry, np.asarray(ids, dtype=np.int64))
                entries.append(entry)
            if fresh_ids:
                threads = 1 if len(fresh_ids) < 1000 else os.cpu_count() or 1
                self._graph.add_items(np.stack(fresh_rows), np.asarray(fresh_ids), num_threads=threads)
            return entries

    def retain(self, entries: np.ndarray) -> None:
        """One more index holds each of these (distinct) entries."""
        with self._lock:
            self._refs[entries] += 1

    def release(self, entries: np.ndarray) -> None:
        """One index fewer holds each of these entries; entries no index holds are removed, with the
        examples no other entry owns."""
        with self._lock:
            self._refs[entries] -= 1
            for entry in entries[self._refs[entries] == 0].tolist():
                self._drop(entry)

    def _new_entry(self) -> int:
        entry = self._next_entry
        self._next_entry += 1
        if entry >= len(self._refs):
            self._offset, self._length, self._refs = (np.concatenate([a, np.zeros_like(a)])
                                                      for a in (self._offset, self._length, self._refs))
        return entry

    def _place(self, entry: int, ids: np.ndarray) -> None:
        if self._used + len(ids) > len(self._flat):
            if self._used - self._live > self._live:
                self._compact()
            if self._used + len(ids) > len(self._flat):
                self._flat = np.concatenate([self._flat, np.zeros(max(len(self._flat), len(ids)), np.int64)])
        self._flat[self._used:self._used + len(ids)] = ids
        self._offset[entry], self._length[entry] = self._used, len(ids)
        self._used += len(ids)
        self._live += len(ids)

    def _compact(self) -> None:
        live = np.flatnonzero(self._length[:self._next_entry])
        parts = [self._flat[self._offset[e]:self._offset[e] + self._length[e]] for e in live.tolist()]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self._offset[live] = np.concatenate([[0], np.cumsum(self._length[live])[:-1]]) if len(live) else live
        self._flat[:len(flat)] = flat
        self._used = self._live = len(flat)

    def _drop(self, entry: int) -> None:
        start, length = int(self._offset[entry]), int(self._length[entry])
        for vid in self._flat[start:start + length].tolist():
            owners = self._owners.get(vid)
            if owners is None or entry not in owners:
                continue  # an example the expert repeats: already dropped
            owners.remove(entry)
            if not owners:
                del self._owners[vid]
                del self._id_of[self._vectors[vid].tobytes()]
                self._graph.mark_deleted(vid)
                self._free.append(vid)
        self._length[entry] = 0
        self._live -= length

    def _allocate(self) -> int:
        if self._free:
            vid = self._free.pop()
            self._graph.unmark_deleted(vid)  # add_items below overwrites the vector in place
            return vid
        vid = self._next_id
        self._next_id += 1
        if vid >= len(self._vectors):
            capacity = 2 * len(self._vectors)
            self._graph.resize_index(capacity)
            grown = np.zeros((capacity, self.dim), dtype=np.float32)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown
        return vid

    # -- reads ------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Distinct example vectors held."""
        with self._lock:
            return len(self._owners)

    def nearest(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest distinct examples of each query: (vector ids [b, k], similarities [b, k])."""
        with self._lock:
            k = min(k, len(self._owners))
            if k == 0:
                return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), np.float32)
            self._graph.set_ef(max(ef, k))
            try:
                labels, distances = self._graph.knn_query(queries, k=k, num_threads=1)
            except RuntimeError:  # fewer than k live elements reachable (many deletions): search exactly
                return self._nearest_exhaustive(queries, k)
        return labels.astype(np.int64), 1.0 - distances  # inner-product space: distance = 1 - similarity

    def _nearest_exhaustive(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        live = np.fromiter(self._owners, dtype=np.int64, count=len(self._owners))
        similarity = queries @ self._vectors[live].T  # [batch, live]
        best = np.argsort(-similarity, axis=1)[:, :k]
        return live[best], np.take_along_axis(similarity, best, axis=1)

    def owners(self, vids: np.ndarray) -> np.ndarray:
        """Every entry owning one of these vector ids (with repeats)."""
        with self._lock:
            return np.fromiter(chain.from_iterable(self._owners.get(v, ()) for v in vids.tolist()), np.int64)

    def examples(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vector ids of each entry, padded ([entries, width], -1 past each one's length), the distinct
        ids among them (sorted), and their vectors [distinct, dim] in that order."""
        with self._lock:
            offsets, lengths = self._offset[entries], self._length[entries]
            width = int(lengths.max())
            steps = np.arange(width)
            inside = steps[None, :] < lengths[:, None]
            padded = np.where(inside, self._flat[np.where(inside, offsets[:, None] + steps[None, :], 0)], -1)
            distinct = np.unique(padded[inside])
            return padded, distinct, self._vectors[distinct]


class CandidateIndex(RoutingIndex):
    """One snapshot's experts over a shared `ExampleStore`: names and entries by score column."""

    def __init__(self, store: ExampleStore, names: tuple[str, ...], entries: np.ndarray,
                 sources: tuple[torch.Tensor, ...]) -> None:
        self.store = store
        self.names = names
        self.entries = entries  # [experts] entry ids, by score column
        self.sources = sources  # the example vectors each entry was built from: identity decides reuse
        self.column_of_name = {name: column for column, name in enumerate(names)}
        # entry id -> score column, -1 for entries of other snapshots
        self.column_of_entry = np.full(int(entries.max()) + 1 if len(entries) else 0, -1, dtype=np.int64)
        self.column_of_entry[entries] = np.arange(len(entries))
        store.retain(entries)
        weakref.finalize(self, store.release, entries)

    def columns_owning(self, vids: np.ndarray) -> np.ndarray:
        """The score columns (sorted, distinct) of this snapshot's experts that own any of these examples."""
        entries = self.store.owners(np.unique(vids))
        entries = entries[entries < len(self.column_of_entry)]
        columns = self.column_of_entry[entries]
        return np.unique(columns[columns >= 0])


@dataclass(frozen=True)
class CandidateScores:
    """Exact scores of the candidates only: `scores` [batch, len(columns)]; `floor` [batch] is what every
    other expert is reported at (the most it could score, capped under the lowest candidate's score)."""

    columns: np.ndarray
    scores: torch.Tensor
    floor: torch.Tensor

    def dense(self, experts: int) -> torch.Tensor:
        out = self.floor[:, None].expand(self.scores.shape[0], experts).clone()
        out[:, torch.from_numpy(self.columns)] = self.scores
        return out


def build_candidate_index(experts: Sequence[ExpertVectors], previous: RoutingIndex | None, store: ExampleStore,
                          summarise: Callable[[torch.Tensor], torch.Tensor]) -> CandidateIndex:
    """The next snapshot's index: entries of experts whose vectors did not change (the same tensor) are
    reused, the others are `summarise`d (the policy's view of the examples) and added."""
    known = previous if isinstance(previous, CandidateIndex) and previous.store is store else None
    entries = np.empty(len(experts), dtype=np.int64)
    fresh: list[int] = []
    for i, expert in enumerate(experts):
        column = known.column_of_name.get(expert.name) if known is not None else None
        if column is not None and known.sources[column] is expert.vectors:
            entries[i] = known.entries[column]
        else:
            fresh.append(i)
    if fresh:
        entries[fresh] = store.add_entries([summarise(experts[i].vectors) for i in fresh])
    return CandidateIndex(store, tuple(e.name for e in experts), entries, tuple(e.vectors for e in experts))


def exact_scores(index: CandidateIndex, queries: np.ndarray, columns: np.ndarray, k: int,
                 aggregation: str) -> np.ndarray:
    """The exhaustive policy's scores [batch, len(columns)] for these experts: top-k similarities of each
    one's own examples, aggregated by mean, max or sum (the knn definition, fp32). NumPy, not torch: a
    request scores a few hundred small rows, where torch's per-operation overhead would dominate."""
    padded, distinct, vectors = index.store.examples(index.entries[columns])
    similarity = queries @ vectors.T  # [batch, distinct]
    lookup = np.zeros(int(distinct[-1]) + 1, dtype=np.int64)
    lookup[distinct] = np.arange(len(distinct))
    sims = np.where(padded < 0, -np.inf, similarity[:, lookup[np.maximum(padded, 0)]])  # [batch, columns, width]
    if aggregation == "max":
        return sims.max(axis=-1)
    width = sims.shape[-1]
    top = sims if k >= width else -np.partition(-sims, k - 1, axis=-1)[..., :k]
    valid = np.isfinite(top)
    total = np.where(valid, top, 0.0).sum(axis=-1, dtype=np.float32)
    return total if aggregation == "sum" else total / np.maximum(valid.sum(axis=-1), 1).astype(np.float32)


def score_by_candidates(index: CandidateIndex, queries: torch.Tensor, k: int, aggregation: str,
                        params: SearchParams) -> CandidateScores:
    """Exact scores for every row's candidates: the union over the batch, so that conversation routing
    compares its turns on the same experts."""
    batch = queries.shape[0]
    flat = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    want = params.candidates
    while True:
        vids, sims = index.store.nearest(flat, want, params.ef)
        complete = vids.shape[1] < want  # the graph returned everything it holds
        columns = index.columns_owning(vids)
        if not len(columns):  # only examples of other snapshots' experts (a catalogue being replaced)
            if complete or want >= params.max_candidates:
                return CandidateScores(np.zeros(0, np.int64), torch.zeros(batch, 0), torch.full((batch,), -1.0))
            want = min(4 * want, params.max_candidates)
            continue
        scores = exact_scores(index, flat, columns, k, aggregation)
        bound = _bound(sims[:, -1], k, aggregation)  # [batch]
        runner_up = np.sort(scores, axis=1)[:, -2] if scores.shape[1] > 1 else scores[:, 0]
        if complete or bool((bound <= runner_up).all()) or want >= params.max_candidates:
            break
        want = min(4 * want, params.max_candidates)
    lowest = scores.min(axis=1)
    floor = lowest if complete else np.minimum(bound, lowest)
    return CandidateScores(columns, torch.from_numpy(scores), torch.from_numpy(floor.astype(np.float32)))


def _bound(similarity: np.ndarray, k: int, aggregation: str) -> np.ndarray:
    """The most an expert can score when none of its examples is more similar than `similarity`."""
    if aggregation != "sum":
        return similarity  # a mean or a max of values <= s is <= s
    return np.where(similarity > 0, k * similarity, similarity)
