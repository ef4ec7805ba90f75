"""Conversation routing on SGD: every user turn of the dev split, routed with its conversation so far.

Experts are SGD's 16 train domains, each with 20 or 200 example user turns drawn from `sgd_train.jsonl`
(fixed seed). Every user turn of `sgd_dev.jsonl` is routed given the conversation up to it, by:
- `last message`: the last user message alone (routing before conversation context);
- `mean of last two user turns`: their mean embedding (the anchor's second row);
- `context, user turns only`: routers/conversation.py reading user turns alone;
- `context (default)`: routers/conversation.py with its default parameters (assistant turns included);
- `context + domain-name capability`: the default context, each expert also given its SGD domain name as
  a capability ("RentalCars" -> "rental cars"; SGD's files carry no intent names);
- `context (calibrated on dev)`: its parameters and the fallback rule fitted on dev (`fit_context`), as
  `switchyard calibrate` does on a conversation file.
Columns: accuracy with no fallback on all in-scope turns, opening turns, follow-ups (same domain as the
previous user turn) and switch turns (another domain); then, with a fallback rule fitted on dev for that
method (the most out-of-scope recall for at most 3 points of in-scope accuracy), in-scope accuracy (a
fallback counts as wrong) and out-of-scope recall: Alarm has no expert, so its turns should reach the
generalist.

Latency: one conversation at a time through the serving path's parts (embedding cache, ONNX encoder for the
turns the cache misses, policy score, filter), for conversations of 1, 5 and 20 user turns with an
assistant reply between turns; as in a live chat, the new user turn and the reply before it are cache
misses and the earlier turns hits. p50, as a ratio to one message.

Run: python bench/conversation_routing.py [--examples 20 200] [--out bench/results/conversation_routing.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors
from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome
from routers.conversation import (
    ASSISTANT_CHARS,
    LAST_MESSAGE,
    NEUTRAL_PHRASES,
    ContextParams,
    LabelledTurns,
    Turn,
    decide_conversation,
    fit_context,
    neutral_turns,
    pack_turns,
    scored_turns,
    window,
)
from routers.embedding_cache import EmbeddingCache
from routers.evaluation import OUT_OF_SCOPE
from routers.labelled_data import conversation_cases, resolve_labels
from routers.policies import create_router

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from library.dialogues import domain_phrase, examples_by_domain  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "sgd"
POLICY = ("knn", {"k": 5, "aggregation": "mean"})  # the anchor's kNN-5


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


ACCURACY_BUDGET = 0.03  # the fallback may cost at most 3 points of in-scope accuracy (the goal)


def report(name: str, queries: list[ScoredQuery], kinds: list[str]) -> dict:
    """Accuracy per kind of turn with no fallback, then with a fallback rule fitted on these turns."""
    row: dict = {"method": name}
    for kind in ("all", "opening", "follow-up", "switch"):
        chosen = [q for q, k in zip(queries, kinds, strict=True)
                  if q.label != OUT_OF_SCOPE and (kind == "all" or k == kind)]
        row[kind] = sum(q.best == q.label for q in chosen) / len(chosen)
    rule = fit_fallback_rule(queries, max_accuracy_loss=ACCURACY_BUDGET)
    row["with_fallback_in_scope"], row["oos_recall"] = outcome(rule, queries)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--latency-only", action="store_true", help="skip the accuracy table")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "conversation_routing.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx")
    train, dev = load("sgd_train.jsonl"), load("sgd_dev.jsonl")
    pools = {n: examples_by_domain(train, n) for n in args.examples}
    names = sorted(next(iter(pools.values())))
    if args.latency_only:
        print_latency(measure_latency(encoder, pools[max(pools)], names, dev, encoder.encode(list(NEUTRAL_PHRASES))))
        return
    cases = conversation_cases(dev)  # every user turn with the conversation so far, as the server reads it
    labels, _ = resolve_labels(cases, set(names))
    kinds = [case.kind for case in cases]
    texts = sorted({t.text for c in cases for t in c.turns} | {t for p in pools.values() for v in p.values()
                                                              for t in v})
    started = time.time()
    vectors = torch.cat([encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    row_of = {t: i for i, t in enumerate(texts)}
    print(f"encoded {len(texts)} texts in {time.time() - started:.0f} s; {len(cases)} dev user turns\n")
    neutral_vectors = encoder.encode(list(NEUTRAL_PHRASES))
    default = ContextParams()
    user_only = replace(default, assistant_temperature=math.inf)
    neutral_all = neutral_turns(vectors, neutral_vectors, default.neutral_similarity)
    rows, fitted = [], {}
    capabilities = encoder.encode([domain_phrase(n) for n in names])
    for per_domain, pool in pools.items():
        router = create_router(POLICY[0], threshold=0.0, params=POLICY[1])
        index = router.build_index([ExpertVectors(n, vectors[[row_of[t] for t in pool[n]]]) for n in names])
        per_text = router.score(vectors, index).float()
        with_capabilities = router.build_index([
            ExpertVectors(n, torch.cat([vectors[[row_of[t] for t in pool[n]]], capabilities[i:i + 1]]))
            for i, n in enumerate(names)])
        per_text_capabilities = router.score(vectors, with_capabilities).float()

        def packed(params: ContextParams, per_text: torch.Tensor = per_text) -> LabelledTurns:
            windows = [window(case.turns, params.max_turns) for case in cases]
            index_rows = [[row_of[t.text] for t in w] for w in windows]
            scores, valid = pack_turns([per_text[r] for r in index_rows])
            neutral, _ = pack_turns([neutral_all[r] for r in index_rows])
            assistant, _ = pack_turns([torch.tensor([t.assistant for t in w]) for w in windows])
            return LabelledTurns(scores, valid, neutral, assistant, labels)

        methods = [("last message", scored_turns(packed(LAST_MESSAGE), names, LAST_MESSAGE))]
        last_two = torch.nn.functional.normalize(torch.stack([
            vectors[[row_of[t.text] for t in c.turns if not t.assistant][-2:]].mean(0) for c in cases]), dim=-1)
        two = router.score(last_two, index).float().topk(2, dim=1)
        methods.append(("mean of last two user turns", [
            ScoredQuery(label, names[i[0]], v[0], v[1])
            for label, v, i in zip(labels, two.values.tolist(), two.indices.tolist(), strict=True)]))
        methods.append(("context, user turns only", scored_turns(packed(user_only), names, user_only)))
        methods.append(("context (default)", scored_turns(packed(default), names, default)))
        methods.append(("context + domain-name capability", scored_turns(
            packed(default, per_text_capabilities), names, default)))
        params, _, queries = fit_context(packed(default), names, default, ACCURACY_BUDGET)
        fitted[per_domain] = params.as_dict()
        methods.append(("context (calibrated on dev)", queries))
        for name, queries in methods:
            rows.append({"examples_per_expert": per_domain, **report(name, queries, kinds)})
        rows[-1]["params"] = params.as_dict()
    print("| examples / expert | routing input | all turns | openings | follow-ups | switches | "
          "with fallback: in-scope acc. | out-of-scope recall (Alarm) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['examples_per_expert']} | {r['method']} | {r['all']:.1%} | {r['opening']:.1%} | "
              f"{r['follow-up']:.1%} | {r['switch']:.1%} | {r['with_fallback_in_scope']:.1%} | "
              f"{r['oos_recall']:.1%} |")
    print(f"\ncalibrated context parameters: {fitted}")
    latency = measure_latency(encoder, pools[max(pools)], names, dev, neutral_vectors)
    print_latency(latency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "conversation_routing", "policy": POLICY, "rows": rows,
                                    "calibrated_params": fitted, "latency": latency}, indent=2))
    print(f"\nwrote {args.out}")


def print_latency(latency: list[dict]) -> None:
    print("\n| user turns | assistant reply before the last turn | routing p50 (ms) | ratio to one message |")
    print("|---|---|---|---|")
    for r in latency:
        reply = "-" if r["turns"] == 1 else ("embedded by the server" if r["reply_cached"] else "not seen before")
        print(f"| {r['turns']} | {reply} | {r['p50_ms']:.2f} | {r['ratio']:.2f}x |")


def measure_latency(encoder: QueryEncoder, pool: dict[str, list[str]], names: list[str], dev: list[dict],
                    neutral_vectors: torch.Tensor, repeats: int = 200) -> list[dict]:
    """Routing p50 of one conversation at a time, as in a live chat with an assistant reply between user
    turns. The earlier turns hit the cache and the new user turn misses; the reply before it hits when
    the server embedded its own answer (`RoutingService.expect_reply`, the serving default) and misses
    when it comes from elsewhere."""
    router = create_router(POLICY[0], threshold=0.0, params=POLICY[1])
    index = router.build_index([ExpertVectors(n, encoder.encode(pool[n])) for n in names])
    params = ContextParams()
    users = [t["content"] for d in dev for t in d["turns"] if t["role"] == "user"]
    replies = [t["content"][:ASSISTANT_CHARS] for d in dev for t in d["turns"] if t["role"] == "assistant"]
    cache = EmbeddingCache(capacity=100_000)
    rng = random.Random(1)
    out = []
    for reply_cached in (True, False):
        for count in (1, 5, 20):
            timings = []
            for _ in range(repeats):
                turns: list[Turn] = []
                for text in rng.sample(users, count):
                    turns += [Turn(rng.choice(replies), assistant=True), Turn(text)] if turns else [Turn(text)]
                if count > 1:  # seen on earlier requests of this conversation (and the reply, when cached)
                    cache.get_or_encode([t.text for t in turns[:-1 if reply_cached else -2]], encoder.encode)
                for turn in turns[-1 if reply_cached or count == 1 else -2:]:
                    cache.forget(turn.text)
                started = time.perf_counter()
                kept = window(turns, params.max_turns)
                vectors = cache.get_or_encode([t.text for t in kept], encoder.encode)
                decide_conversation(router, index, kept, vectors, neutral_vectors, params, FallbackRule(0.0))
                timings.append((time.perf_counter() - started) * 1000)
            out.append({"turns": count, "reply_cached": reply_cached, "p50_ms": statistics.median(timings)})
    single = statistics.median([r["p50_ms"] for r in out if r["turns"] == 1])
    for r in out:
        r["ratio"] = r["p50_ms"] / single
    return out


if __name__ == "__main__":
    main()
