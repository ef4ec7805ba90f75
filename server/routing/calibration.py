"""Fitting and keeping the calibrated fallback rule: labelled queries in, per-expert thresholds out.

Labelled conversations also refit conversation routing's context parameters (temperature and switch
probability, routers/conversation.py `fit_context`) together with the thresholds. Both are stored in the
manifest beside the experts (so they survive restarts) and swapped into the routing service in one
assignment each.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from types import MappingProxyType
from typing import Any

from experts.manifest import Manifest
from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome, rule_value
from routers.conversation import ContextParams, LabelledTurns, Turn, fit_context, scored_turns
from routers.evaluation import OUT_OF_SCOPE
from routers.labelled_data import OOS_LABELS, LabelledDataError, LabelledTurn, conversation_cases, resolve_labels
from server.failures import Conflict, InvalidRequest
from server.protocol import CalibrationOut, CalibrationRequest
from server.routing.service import RoutingService

_SETTING = "fallback_rule"
CONVERSATION_ACCURACY_BUDGET = 0.03
# Below these a fit describes the few examples, not the traffic: one example once set the threshold for
# all traffic, and four mislabelled ones set it to 0 (no fallback at all).
MIN_CASES = 20
MIN_PER_LABEL = 5


def rule_to_json(rule: FallbackRule, context: ContextParams | None = None, fit: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {"threshold": rule.threshold, "per_expert": dict(rule.per_expert), "margin": rule.margin}
    if context is not None:
        data["context"] = context.as_dict()
    if fit is not None:
        data["fit"] = fit
    return json.dumps(data)


def rule_from_json(text: str) -> tuple[FallbackRule, ContextParams | None, dict[str, Any]]:
    data = json.loads(text)
    context = ContextParams(**data["context"]) if data.get("context") else None
    rule = FallbackRule(data["threshold"], MappingProxyType(data["per_expert"]), data["margin"])
    return rule, context, data.get("fit") or {}


def restore_rule(manifest: Manifest, routing: RoutingService) -> None:
    """The stored rule in force, or the configured one when none is stored (a gateway following another's
    reset)."""
    stored = manifest.get_setting(_SETTING)
    if stored is None:
        routing.rule, routing.context, routing.rule_fit = routing.default_rule, routing.default_context, {}
    else:
        routing.rule, context, routing.rule_fit = rule_from_json(stored)
        routing.context = context or routing.default_context


def describe(routing: RoutingService) -> CalibrationOut:
    """The rule in force and what it was fitted on (kept with the rule, so a later GET says the same)."""
    rule, fit = routing.rule, routing.rule_fit
    return CalibrationOut(calibrated=rule is not routing.default_rule, threshold=rule.threshold,
                          per_expert=dict(rule.per_expert), margin=rule.margin, fitted_on=fit.get("fitted_on", 0),
                          in_scope_accuracy=fit.get("in_scope_accuracy"), oos_recall=fit.get("oos_recall"),
                          context=routing.context.as_dict(), out_of_scope_labels=fit.get("out_of_scope_labels"))


def _check_enough(labels: list[str]) -> None:
    counts = Counter(labels)
    if len(labels) < MIN_CASES:
        raise InvalidRequest(f"calibration needs at least {MIN_CASES} labelled cases, got {len(labels)}",
                             "calibration_data", "examples")
    if not any(label != OUT_OF_SCOPE for label in counts):
        raise InvalidRequest("calibration needs in-scope cases (labelled with an expert)",
                             "calibration_data", "examples")
    few = sorted(label for label, n in counts.items() if n < MIN_PER_LABEL)
    if few:
        shown = ", ".join(f"{label or 'out of scope'!r} ({counts[label]})" for label in few[:5])
        raise InvalidRequest(f"calibration needs at least {MIN_PER_LABEL} cases per label; too few for {shown}",
                             "calibration_data", "examples")


def check_not_worse(fitted: FallbackRule, queries: list[ScoredQuery], current: FallbackRule,
                    current_queries: list[ScoredQuery], budget: float | None) -> None:
    """Refuse (409) a fitted rule that scores worse on its own cases than the calibrated rule in force
    does, by the measure the fit maximises. (A first fit replaces the configured threshold without this
    test: that threshold was not fitted on any data.)"""
    if rule_value(fitted, queries, budget) >= rule_value(current, current_queries, budget):
        return
    (accuracy, recall), (kept_accuracy, kept_recall) = outcome(fitted, queries), outcome(current, current_queries)
    raise Conflict(f"the fitted rule scores worse on these cases than the rule in force (in-scope accuracy "
                   f"{accuracy:.3f} vs {kept_accuracy:.3f}, out-of-scope recall {recall:.3f} vs "
                   f"{kept_recall:.3f}); the rule in force is kept", "calibration_worse", "examples")


def _cases(body: CalibrationRequest, known: set[str], generalist_name: str) -> list[LabelledTurn]:
    if body.conversations is not None:
        try:
            return conversation_cases([c.model_dump() for c in body.conversations])
        except LabelledDataError as exc:
            raise InvalidRequest(str(exc), "calibration_data", "conversations") from exc
    cases = []
    for example in body.examples or []:
        label = OUT_OF_SCOPE if example.label in OOS_LABELS | {generalist_name} else example.label
        if label != OUT_OF_SCOPE and label not in known:
            raise InvalidRequest(f"label {example.label!r} is neither an expert nor 'generalist'",
                                 "unknown_label", "examples")
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
        raise InvalidRequest("calibration needs labelled cases and registered experts", "calibration_data", "examples")
    _check_enough(labels)
    scores, valid, neutral, assistant = await routing.context_scores([c.turns for c in cases])
    turns = LabelledTurns(scores, valid, neutral, assistant, labels)
    conversations = body.conversations is not None
    budget = body.max_accuracy_loss
    if budget is None and conversations:
        budget = CONVERSATION_ACCURACY_BUDGET
    try:
        if conversations:
            context, rule, queries = await asyncio.to_thread(fit_context, turns, names, routing.context, budget)
        else:
            context = routing.context
            queries = scored_turns(turns, names, context)
            rule = fit_fallback_rule(queries, max_accuracy_loss=budget)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "calibration_data", "examples") from exc
    if routing.rule is not routing.default_rule:  # the configured threshold was fitted on nothing
        current_queries = scored_turns(turns, names, routing.context) if conversations else queries
        check_not_worse(rule, queries, routing.rule, current_queries, budget)
    accuracy, recall = outcome(rule, queries)
    has_oos = any(q.label == OUT_OF_SCOPE for q in queries)
    fit = {"fitted_on": len(queries), "in_scope_accuracy": accuracy, "oos_recall": recall if has_oos else None,
           "out_of_scope_labels": out_of_scope if conversations else None}
    stored_context = context if conversations or context != routing.default_context else None
    await asyncio.to_thread(manifest.put_setting, _SETTING, rule_to_json(rule, stored_context, fit))
    routing.rule, routing.context, routing.rule_fit = rule, context, fit
    return describe(routing)


async def reset(routing: RoutingService, manifest: Manifest) -> CalibrationOut:
    await asyncio.to_thread(manifest.put_setting, _SETTING, None)
    restore_rule(manifest, routing)
    return describe(routing)
