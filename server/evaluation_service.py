"""Routing quality of the live server on a labelled file: what the console's Evaluation page shows.

It scores through the same decisions a request gets (the policy, the calibrated rule, feedback), in
batches, without leasing anything or counting as traffic. `switchyard eval --url` gives the same figures
query by query through `/v1/route`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from routers.evaluation import OUT_OF_SCOPE, evaluate
from server.routing_service import RoutingService

BATCH = 256
SHOWN_MISTAKES = 50


async def evaluate_labelled(routing: RoutingService, rows: list[tuple[str, str]]) -> dict[str, Any]:
    """The report (accuracy, per-label table, confusion matrix) and the first mistakes, to read them."""
    texts, truth = [t for t, _ in rows], [label for _, label in rows]
    predicted: list[str] = []
    abstain: list[float] = []
    for start in range(0, len(texts), BATCH):
        for decision in await routing.rank_batch(texts[start:start + BATCH]):
            predicted.append(OUT_OF_SCOPE if decision.fallback or decision.expert is None else decision.expert)
            abstain.append(-(decision.score if decision.score is not None else -1.0))
    report = asdict(evaluate(truth, predicted, abstain))
    report["out_of_scope_label"] = OUT_OF_SCOPE
    report["registry_version"] = routing.registry_version
    report["mistakes"] = [{"text": text, "label": label, "predicted": guess}
                          for text, label, guess in zip(texts, truth, predicted, strict=True)
                          if label != guess][:SHOWN_MISTAKES]
    return report
