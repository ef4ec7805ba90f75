"""`switchyard eval` and `switchyard calibrate`: routing quality on a labelled file.

Labelled files are JSONL (`{"text": ..., "label": ...}`) or CSV with `text,label` columns; the label is an
expert name, or `oos` / `generalist` for queries the generalist should answer. Conversation JSONL (the
format of `../shared/data/sgd`, a `domain` on each user turn) is told apart by its `turns`: every user
turn is routed with the conversation up to it, the report adds accuracy for opening, follow-up and switch
turns, and domains with no expert count as out of scope.

- `eval --data FILE [--url URL]` scores a running server through `/v1/route` (its experts, its rule).
- `eval --data FILE --train FILE [--examples-per-expert K] [--router knn] [--calibrate FILE]` builds
  experts from the training file in-process (K examples per label, fixed seed) and scores the policy.
- `calibrate --data FILE [--url URL]` fits the server's fallback rule through `POST /admin/calibration`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from client.common import EXIT_OK, Connection, Progress, add_connection_arguments, emit, table
from routers.evaluation import OUT_OF_SCOPE, EvaluationReport, evaluate
from routers.labelled_data import (
    GENERALIST_LABEL,
    LabelledTurn,
    by_turn_kind,
    is_conversation_data,
    read_labelled,
    read_labelled_turns,
    resolve_labels,
)


def add_arguments(eval_parser: argparse.ArgumentParser, calibrate_parser: argparse.ArgumentParser) -> None:
    eval_parser.add_argument("--data", type=Path, required=True, help="labelled JSONL or CSV to score")
    eval_parser.add_argument("--train", type=Path, help="offline: build experts from this labelled file")
    eval_parser.add_argument("--examples-per-expert", type=int, help="offline: sample K examples per label")
    eval_parser.add_argument("--router", default="knn", help="offline: routing policy")
    eval_parser.add_argument("--threshold", type=float, default=0.3, help="offline: global fallback threshold")
    eval_parser.add_argument("--calibrate", type=Path, help="offline: fit the fallback rule on this file first")
    eval_parser.add_argument("--confusion", type=Path, help="write the confusion matrix as a PNG")
    eval_parser.add_argument("--report", type=Path, help="write the full report as JSON to this file")
    add_connection_arguments(eval_parser)
    calibrate_parser.add_argument("--data", type=Path, required=True, help="labelled queries or conversations")
    calibrate_parser.add_argument("--max-accuracy-loss", type=float,
                                  help="catch the most out-of-scope cases for at most this in-scope accuracy loss "
                                       "(a fraction; conversations default to 0.03)")
    add_connection_arguments(calibrate_parser)


def run_eval(args: argparse.Namespace) -> int:
    cases = read_labelled_turns(args.data)
    conversations = any(c.kind != "query" for c in cases)
    if args.train:
        if conversations:
            raise SystemExit("offline evaluation takes labelled queries; evaluate conversations through a "
                             "server (--url)")
        predicted, abstain = _offline(args, [c.turns[0].text for c in cases])
        truth = [c.label for c in cases]
    else:
        predicted, abstain, experts = _through_server(args, cases)
        truth, _ = resolve_labels(cases, experts)
    report = evaluate(truth, predicted, abstain)
    result = asdict(report)
    if conversations:
        result["turn_kinds"] = by_turn_kind(cases, truth, predicted)
    if args.report:
        args.report.write_text(json.dumps(result, indent=2))
    emit(args, result, lambda _: print_report(report, result.get("turn_kinds")))
    if args.confusion:
        write_confusion_png(report, args.confusion)
        print(f"confusion matrix: {args.confusion}", file=sys.stderr)
    return EXIT_OK


def run_calibrate(args: argparse.Namespace) -> int:
    text = args.data.read_text(encoding="utf-8")
    if is_conversation_data(text):
        body: dict = {"conversations": [json.loads(line) for line in text.splitlines() if line.strip()]}
    else:
        body = {"examples": [{"text": t, "label": GENERALIST_LABEL if label == OUT_OF_SCOPE else label}
                             for t, label in read_labelled(args.data)]}
    if args.max_accuracy_loss is not None:
        body["max_accuracy_loss"] = args.max_accuracy_loss
    connection = Connection(args, timeout=600)
    try:
        result = connection.call("POST", "/admin/calibration", json=body)
    finally:
        connection.close()
    emit(args, result, _print_calibration)
    return EXIT_OK


def _print_calibration(result: dict) -> None:
    print(f"calibrated on {result['fitted_on']} queries: threshold {result['threshold']:.3f}, "
          f"margin {result['margin']:.3f}, in-scope accuracy {_pct(result.get('in_scope_accuracy'))}")
    if result.get("out_of_scope_labels"):
        print(f"domains with no expert, fitted as out of scope: {', '.join(result['out_of_scope_labels'])}")
    if result.get("context"):
        print("conversation context: " + ", ".join(f"{k} {v}" for k, v in result["context"].items()))
    table(["EXPERT", "THRESHOLD"], [(name, f"{value:.3f}") for name, value in sorted(result["per_expert"].items())],
          right=(1,))


def _through_server(args: argparse.Namespace, cases: list[LabelledTurn]) -> tuple[list[str], list[float], set[str]]:
    """Score case by case through /v1/route, as a client would see it (with a progress bar); a conversation
    turn is sent as the conversation's messages up to it."""
    predicted, abstain = [], []
    connection = Connection(args, timeout=60)
    progress = Progress(len(cases), "evaluating", enabled=None if not args.json else False)
    try:
        models = connection.call("GET", "/v1/models")["data"]
        experts = {m["id"] for m in models if m.get("kind") in ("adapter", "retriever")}
        for case in cases:
            body: dict = ({"query": case.turns[0].text} if case.kind == "query" else
                          {"messages": [{"role": "assistant" if t.assistant else "user", "content": t.text}
                                        for t in case.turns]})
            decision = connection.call("POST", "/v1/route", json={**body, "top_n": 2})["decision"]
            predicted.append(OUT_OF_SCOPE if decision["fallback"] else decision["expert"])
            abstain.append(-(decision["score"] if decision["score"] is not None else -1.0))
            progress.advance()
    finally:
        progress.close()
        connection.close()
    return predicted, abstain, experts


def _offline(args: argparse.Namespace, texts: list[str]) -> tuple[list[str], list[float]]:
    from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
    from routers.base import ExpertVectors
    from routers.calibration import ScoredQuery, fit_fallback_rule
    from routers.policies import create_router

    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER))
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in read_labelled(args.train):
        if label != OUT_OF_SCOPE:
            by_label[label].append(text)
    rng = random.Random(0)
    experts = []
    for label in sorted(by_label):
        examples = by_label[label]
        if args.examples_per_expert and len(examples) > args.examples_per_expert:
            examples = rng.sample(examples, args.examples_per_expert)
        experts.append(ExpertVectors(label, _encode(encoder, examples)))
    router = create_router(args.router, args.threshold)
    index = router.build_index(experts)
    if getattr(index, "fit", None) is not None:
        index.fit.result()
    rule = None
    if args.calibrate:
        held = read_labelled(args.calibrate)
        decisions = router.decide_batch(_encode(encoder, [t for t, _ in held]), index, rule=_no_fallback())
        rule = fit_fallback_rule([ScoredQuery(label, d.ranking[0].name, d.ranking[0].score, d.runner_up_score)
                                  for (_, label), d in zip(held, decisions, strict=True)])
    decisions = router.decide_batch(_encode(encoder, texts), index, rule=rule)
    return ([d.expert or OUT_OF_SCOPE for d in decisions], [-(d.score or 0.0) for d in decisions])


def _no_fallback():  # noqa: ANN202
    from routers.calibration import FallbackRule

    return FallbackRule(float("-inf"))


def _encode(encoder, texts: list[str]):  # noqa: ANN001, ANN202
    import torch

    return torch.cat([encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_report(report: EvaluationReport, turn_kinds: dict | None = None) -> None:
    print(f"queries: {report.n}")
    if turn_kinds:
        print("   ".join(f"{kind}: {_pct(v['accuracy'])} of {v['n']}" for kind, v in turn_kinds.items()))
    print(f"accuracy: {_pct(report.accuracy)}   in-scope accuracy: {_pct(report.in_scope_accuracy)}   "
          f"macro-F1: {report.macro_f1:.3f}")
    print(f"out-of-scope precision {_pct(report.oos_precision)}, recall {_pct(report.oos_recall)}, "
          f"F1 {_pct(report.oos_f1)}; abstain AUROC "
          f"{'-' if report.abstain_auroc is None else f'{report.abstain_auroc:.3f}'}")
    print(f"\n{'label':<24} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}")
    for row in report.per_label:
        print(f"{row.label:<24} {row.precision:>9.3f} {row.recall:>7.3f} {row.f1:>6.3f} {row.support:>8}")


def write_confusion_png(report: EvaluationReport, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # an optional extra: pip install "switchyard[eval]"
        raise SystemExit("--confusion needs matplotlib: pip install 'switchyard[eval]'") from exc
    size = max(4.0, 0.6 * len(report.labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(report.confusion, cmap="Blues")
    axes.set_xticks(range(len(report.labels)), report.labels, rotation=45, ha="right")
    axes.set_yticks(range(len(report.labels)), report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true label")
    peak = max((max(row) for row in report.confusion), default=0)
    for i, row in enumerate(report.confusion):
        for j, count in enumerate(row):
            if count:
                axes.text(j, i, str(count), ha="center", va="center",
                          color="white" if count > peak / 2 else "black", fontsize=8)
    axes.set_title(f"routing confusion (accuracy {report.accuracy:.1%})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
