"""Fitting and keeping the calibrated fallback rule: labelled queries in, per-expert thresholds out.

The rule is stored in the manifest beside the experts (so it survives restarts) and swapped into the
routing service in one assignment.
"""

from __future__ import annotations

import asyncio
import json
from types import MappingProxyType

from experts.manifest import Manifest
from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome
from routers.evaluation import OUT_OF_SCOPE
from server.errors import APIError
from server.protocol import CalibrationOut, LabelledQuery
from server.routing_service import RoutingService

_SETTING = "fallback_rule"
OUT_OF_SCOPE_LABELS = {"oos", "out_of_scope", "generalist"}


def rule_to_json(rule: FallbackRule) -> str:
    return json.dumps({"threshold": rule.threshold, "per_expert": dict(rule.per_expert), "margin": rule.margin})


def rule_from_json(text: str) -> FallbackRule:
    data = json.loads(text)
    return FallbackRule(data["threshold"], MappingProxyType(data["per_expert"]), data["margin"])


def restore_rule(manifest: Manifest, routing: RoutingService) -> None:
    stored = manifest.get_setting(_SETTING)
    if stored is not None:
        routing.rule = rule_from_json(stored)


def describe(rule: FallbackRule, calibrated: bool, accuracy: float | None = None,
             recall: float | None = None, n: int = 0) -> CalibrationOut:
    return CalibrationOut(calibrated=calibrated, threshold=rule.threshold, per_expert=dict(rule.per_expert),
                          margin=rule.margin, fitted_on=n, in_scope_accuracy=accuracy, oos_recall=recall)


async def calibrate(
    routing: RoutingService, manifest: Manifest, examples: list[LabelledQuery], generalist_name: str
) -> CalibrationOut:
    """Score every labelled query without fallback, fit the rule, store it, swap it in."""
    known = set(routing.expert_names())
    labels = []
    for example in examples:
        label = OUT_OF_SCOPE if example.label in OUT_OF_SCOPE_LABELS | {generalist_name} else example.label
        if label != OUT_OF_SCOPE and label not in known:
            raise APIError(400, f"label {example.label!r} is neither an expert nor 'generalist'",
                           "invalid_request_error", "unknown_label", "examples")
        labels.append(label)
    decisions = await routing.rank_without_fallback([e.text for e in examples])
    queries = [ScoredQuery(label, d.ranking[0].name, d.ranking[0].score, d.runner_up_score)
               for label, d in zip(labels, decisions, strict=True) if d.ranking]
    try:
        rule = fit_fallback_rule(queries)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_request_error", "calibration_data", "examples") from exc
    await asyncio.to_thread(manifest.put_setting, _SETTING, rule_to_json(rule))
    routing.rule = rule
    accuracy, recall = outcome(rule, queries)
    has_oos = any(q.label == OUT_OF_SCOPE for q in queries)
    return describe(rule, True, accuracy, recall if has_oos else None, len(queries))


async def reset(routing: RoutingService, manifest: Manifest) -> CalibrationOut:
    await asyncio.to_thread(manifest.put_setting, _SETTING, None)
    routing.rule = routing.default_rule
    return describe(routing.rule, False)
