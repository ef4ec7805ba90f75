"""Routing quality on CLINC150 collapsed to its 10 domains (one expert per domain, `oos` = generalist).

For 0, 5, 20, 100 and all training examples per domain (sampled with a fixed seed), every policy is built
from those examples, without and with capabilities: each domain's 15 intent names, underscores turned into
spaces (0 examples: capabilities alone), or at 5, 20 and 100 examples the up to 15 phrases that
`routers/capability_suggestions.py` suggests from the same sampled examples. Scored on `test`: in-scope
domain accuracy with no fallback. Then the fallback
rule is fitted on `val` + `oos_val` only (`routers.calibration`) and reported on `test` + `oos_test`:
in-scope accuracy counting a fallback as wrong, out-of-scope recall, and the AUROC of the abstain score
(minus the best routing score). Prints a markdown table and writes JSON.

Run: python bench/routing_quality.py [--out bench/results/routing_quality.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors, Router
from routers.calibration import ScoredQuery, fit_fallback_rule, outcome
from routers.capability_suggestions import suggest_capabilities
from routers.evaluation import OUT_OF_SCOPE, auroc
from routers.policies import create_router

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "clinc150"
POLICIES = [("centroid", {}), ("knn", {"k": 3, "aggregation": "mean"}), ("knn", {"k": 10, "aggregation": "mean"}),
            ("prototypes", {"prototypes": 8}), ("linear", {})]
SIZES = (0, 5, 20, 100, None)


def load_clinc() -> tuple[dict, dict[str, str]]:
    """CLINC150's splits, and each intent's domain (the experts here are domains)."""
    data = json.loads((DATA / "data_full.json").read_text())
    domains = json.loads((DATA / "domains.json").read_text())
    return data, {intent: domain for domain, intents in domains.items() for intent in intents}


def load_split(encoder: QueryEncoder, rows: list[list[str]], domain_of: dict[str, str]) -> tuple[torch.Tensor, list]:
    texts = [text for text, _ in rows]
    labels = [domain_of.get(intent, OUT_OF_SCOPE) for _, intent in rows]
    vectors = torch.cat([encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    return vectors, labels


def capability_vectors(encoder: QueryEncoder) -> dict[str, torch.Tensor]:
    """Each domain's intent names as capability phrases ("freeze_account" -> "freeze account"), embedded."""
    domains = json.loads((DATA / "domains.json").read_text())
    return {domain: encoder.encode([intent.replace("_", " ") for intent in intents])
            for domain, intents in domains.items()}


def sample_rows(labels: list[str], per_domain: int | None) -> dict[str, list[int]]:
    """Each domain's training rows: all of them, or `per_domain` drawn with a fixed seed."""
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_domain[label].append(i)
    rng = random.Random(0)
    return {domain: by_domain[domain] if per_domain is None else rng.sample(by_domain[domain], per_domain)
            for domain in sorted(by_domain)}


def sample_experts(vectors: torch.Tensor, labels: list[str], per_domain: int | None) -> list[ExpertVectors]:
    return [ExpertVectors(domain, vectors[rows]) for domain, rows in sample_rows(labels, per_domain).items()]


def suggested_vectors(encoder: QueryEncoder, texts: list[str], rows: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Capabilities suggested from each domain's sampled examples (routers/capability_suggestions.py)."""
    by_domain = {domain: [texts[i] for i in chosen] for domain, chosen in rows.items()}
    return {domain: encoder.encode(suggest_capabilities(domain, by_domain) or [by_domain[domain][0]])
            for domain in by_domain}


def scored(router: Router, index, vectors: torch.Tensor, labels: list[str]) -> list[ScoredQuery]:  # noqa: ANN001
    out = []
    for start in range(0, len(labels), 512):
        for decision, label in zip(router.decide_batch(vectors[start:start + 512], index, top_n=2),
                                   labels[start:start + 512], strict=True):
            out.append(ScoredQuery(label, decision.ranking[0].name, decision.ranking[0].score,
                                   decision.runner_up_score))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "routing_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data, domain_of = load_clinc()
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER))
    started = time.time()
    train = load_split(encoder, data["train"], domain_of)
    val = load_split(encoder, data["val"] + data["oos_val"], domain_of)
    test = load_split(encoder, data["test"] + data["oos_test"], domain_of)
    print(f"encoded {len(train[1]) + len(val[1]) + len(test[1])} queries in {time.time() - started:.0f} s\n")
    intent_names = capability_vectors(encoder)
    train_texts = [text for text, _ in data["train"]]
    rows = []
    cases = [(n, c) for n in SIZES for c in ("no", "intent names", "suggested")
             if (n != 0 or c == "intent names") and (c != "suggested" or n in (5, 20, 100))]
    for per_domain, with_capabilities in cases:
        experts = sample_experts(*train, per_domain if per_domain != 0 else 1)
        capabilities = (intent_names if with_capabilities == "intent names" else
                        suggested_vectors(encoder, train_texts, sample_rows(train[1], per_domain))
                        if with_capabilities == "suggested" else {})
        experts = [ExpertVectors(e.name, torch.cat(([e.vectors] if per_domain != 0 else [])
                                                   + ([capabilities[e.name]] if e.name in capabilities else [])))
                   for e in experts]
        for name, params in POLICIES:
            router = create_router(name, threshold=0.0, params=params)
            index = router.build_index(experts)
            fit_started = time.perf_counter()
            if getattr(index, "fit", None) is not None:
                index.fit.result()  # the linear head: measure the policy itself, not its warm-up fallback
            fit_seconds = time.perf_counter() - fit_started
            test_scored = scored(router, index, *test)
            in_scope = [q for q in test_scored if q.label != OUT_OF_SCOPE]
            rule = fit_fallback_rule(scored(router, index, *val))
            accuracy_with_fallback, oos_recall = outcome(rule, test_scored)
            area = auroc([-q.score for q in test_scored if q.label == OUT_OF_SCOPE],
                         [-q.score for q in in_scope])
            rows.append({
                "examples_per_expert": "all" if per_domain is None else per_domain, "capabilities": with_capabilities,
                "policy": name, "params": params,
                "in_scope_accuracy": sum(q.best == q.label for q in in_scope) / len(in_scope),
                "calibrated_in_scope_accuracy": accuracy_with_fallback, "oos_recall": oos_recall,
                "abstain_auroc": area, "margin": rule.margin, "global_threshold": rule.threshold,
                "background_fit_s": fit_seconds,
            })
    print("| examples / expert | capabilities | policy | in-scope acc. | with fallback: in-scope acc. | OOS recall "
          "| AUROC |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["policy"] + (f" {r['params']}" if r["params"] else "")
        print(f"| {r['examples_per_expert']} | {r['capabilities']} | {label} | "
              f"{r['in_scope_accuracy']:.1%} | "
              f"{r['calibrated_in_scope_accuracy']:.1%} | {r['oos_recall']:.1%} | {r['abstain_auroc']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "routing_quality", "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
