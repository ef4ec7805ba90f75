"""Routing quality of the live server on a labelled file: what the console's Evaluation page shows.

It scores through the same decisions a request gets (the policy in conversation context, the calibrated
rule, feedback), in batches, without leasing anything or counting as traffic. `switchyard eval --url`
gives the same figures case by case through `/v1/route`. Conversation files also get accuracy by kind of
turn (openings, follow-ups, switches); their labels that name no expert count as out of scope.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from routers.evaluation import OUT_OF_SCOPE, evaluate
from routers.labelled_data import LabelledTurn, by_turn_kind, resolve_labels
from server.routing.service import RoutingService

BATCH = 256
SHOWN_MISTAKES = 50


async def evaluate_labelled(routing: RoutingService, cases: list[LabelledTurn]) -> dict[str, Any]:
    """The report (accuracy, per-label table, confusion matrix) and the first mistakes, to read them."""
    truth, out_of_scope = resolve_labels(cases, set(routing.expert_names()))
    predicted: list[str] = []
    abstain: list[float] = []
    for start in range(0, len(cases), BATCH):
        for decision in await routing.rank_batch([c.turns for c in cases[start:start + BATCH]]):
            predicted.append(OUT_OF_SCOPE if decision.fallback or decision.expert is None else decision.expert)
            abstain.append(-(decision.score if decision.score is not None else -1.0))
    report = asdict(evaluate(truth, predicted, abstain))
    report["out_of_scope_label"] = OUT_OF_SCOPE
    report["registry_version"] = routing.registry_version
    if any(c.kind != "query" for c in cases):
        report["turn_kinds"] = by_turn_kind(cases, truth, predicted)
        report["out_of_scope_labels"] = out_of_scope
    report["mistakes"] = [{"text": case.turns[-1].text, "turns": sum(not t.assistant for t in case.turns),
                           "label": label, "predicted": guess}
                          for case, label, guess in zip(cases, truth, predicted, strict=True)
                          if label != guess][:SHOWN_MISTAKES]
    return report
