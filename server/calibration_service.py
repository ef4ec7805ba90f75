"""Fitting and keeping the calibrated fallback rule: labelled queries in, per-expert thresholds out.

Labelled conversations also refit conversation routing's context parameters (temperature and switch
probability, routers/conversation.py `fit_context`) together with the thresholds. Both are stored in the
manifest beside the experts (so they survive restarts) and swapped into the routing service in one
assignment each.
"""

from __future__ import annotations

import asyncio
import json
from types import MappingProxyType

from experts.manifest import Manifest
from routers.calibration import FallbackRule, fit_fallback_rule, outcome
from routers.conversation import ContextParams, LabelledTurns, Turn, fit_context, scored_turns
from routers.evaluation import OUT_OF_SCOPE
from server.errors import APIError
from server.labelled_data import LabelledDataError, LabelledTurn, conversation_cases, resolve_labels
from server.protocol import CalibrationOut, CalibrationRequest
from server.routing_service import RoutingService

_SETTING = "fallback_rule"
OUT_OF_SCOPE_LABELS = {"oos", "out_of_scope", "generalist"}
CONVERSATION_ACCURACY_BUDGET = 0.03


def rule_to_json(rule: FallbackRule, context: ContextParams | None = None) -> str:
    data = {"threshold": rule.threshold, "per_expert": dict(rule.per_expert), "margin": rule.margin}
    if context is not None:
        data["context"] = context.as_dict()
    return json.dumps(data)


def rule_from_json(text: str) -> tuple[FallbackRule, ContextParams | None]:
    data = json.loads(text)
    context = ContextParams(**data["context"]) if data.get("context") else None
    return FallbackRule(data["threshold"], MappingProxyType(data["per_expert"]), data["margin"]), context


def restore_rule(manifest: Manifest, routing: RoutingService) -> None:
    stored = manifest.get_setting(_SETTING)
    if stored is not None:
        routing.rule, context = rule_from_json(stored)
        routing.context = context or routing.default_context


def describe(routing: RoutingService, accuracy: float | None = None, recall: float | None = None, n: int = 0,
             out_of_scope_labels: list[str] | None = None) -> CalibrationOut:
    rule = routing.rule
    return CalibrationOut(calibrated=rule is not routing.default_rule, threshold=rule.threshold,
                          per_expert=dict(rule.per_expert), margin=rule.margin, fitted_on=n,
                          in_scope_accuracy=accuracy, oos_recall=recall, context=routing.context.as_dict(),
                          out_of_scope_labels=out_of_scope_labels)


def _cases(body: CalibrationRequest, known: set[str], generalist_name: str) -> list[LabelledTurn]:
    if body.conversations is not None:
        try:
            return conversation_cases([c.model_dump() for c in body.conversations])
        except LabelledDataError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "calibration_data", "conversations") from exc
    cases = []
    for example in body.examples or []:
        label = OUT_OF_SCOPE if example.label in OUT_OF_SCOPE_LABELS | {generalist_name} else example.label
        if label != OUT_OF_SCOPE and label not in known:
            raise APIError(400, f"label {example.label!r} is neither an expert nor 'generalist'",
                           "invalid_request_error", "unknown_label", "examples")
        cases.append(LabelledTurn((Turn(example.text),), label, "query"))
    return cases


async def calibrate(routing: RoutingService, manifest: Manifest, body: CalibrationRequest,
                    generalist_name: str) -> CalibrationOut:
    """Score every labelled case in context without fallback, fit the rule (and, on conversations, the
    context parameters), store them, swap them in."""
    names = routing.index_names()
    cases = _cases(body, set(names), generalist_name)
    labels, out_of_scope = resolve_labels(cases, set(names))
    if not cases or not names:
        raise APIError(400, "calibration needs labelled cases and registered experts", "invalid_request_error",
                       "calibration_data", "examples")
    scores, valid, neutral, assistant = await routing.context_scores([c.turns for c in cases])
    turns = LabelledTurns(scores, valid, neutral, assistant, labels)
    conversations = body.conversations is not None
    budget = body.max_accuracy_loss
    try:
        if conversations:
            context, rule, queries = await asyncio.to_thread(
                fit_context, turns, names, routing.context,
                CONVERSATION_ACCURACY_BUDGET if budget is None else budget)
        else:
            context = routing.context
            queries = scored_turns(turns, names, context)
            rule = fit_fallback_rule(queries, max_accuracy_loss=budget)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_request_error", "calibration_data", "examples") from exc
    stored_context = context if conversations or context != routing.default_context else None
    await asyncio.to_thread(manifest.put_setting, _SETTING, rule_to_json(rule, stored_context))
    routing.rule, routing.context = rule, context
    accuracy, recall = outcome(rule, queries)
    has_oos = any(q.label == OUT_OF_SCOPE for q in queries)
    return describe(routing, accuracy, recall if has_oos else None, len(queries),
                    out_of_scope if conversations else None)


async def reset(routing: RoutingService, manifest: Manifest) -> CalibrationOut:
    await asyncio.to_thread(manifest.put_setting, _SETTING, None)
    routing.rule, routing.context = routing.default_rule, routing.default_context
    return describe(routing)
