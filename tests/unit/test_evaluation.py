"""Evaluation maths on small hand-made cases, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from routers.evaluation import OUT_OF_SCOPE, auroc, evaluate

OOS = OUT_OF_SCOPE


def test_accuracy_f1_and_confusion() -> None:
    truth = ["a", "a", "b", "b", OOS, OOS]
    predicted = ["a", "b", "b", "b", OOS, "a"]
    report = evaluate(truth, predicted)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.in_scope_accuracy == pytest.approx(3 / 4)
    assert report.labels == ["a", "b", OOS]
    assert report.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    by = {r.label: r for r in report.per_label}
    # a: tp 1, fp 1 (the oos query), fn 1 -> p = r = f1 = 0.5
    assert (by["a"].precision, by["a"].recall, by["a"].f1) == pytest.approx((0.5, 0.5, 0.5))
    # b: tp 2, fp 1, fn 0 -> p 2/3, r 1, f1 0.8
    assert (by["b"].precision, by["b"].recall, by["b"].f1) == pytest.approx((2 / 3, 1.0, 0.8))
    # oos: tp 1, fp 0, fn 1 -> p 1, r 0.5, f1 2/3
    assert (report.oos_precision, report.oos_recall, report.oos_f1) == pytest.approx((1.0, 0.5, 2 / 3))
    assert report.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_without_out_of_scope_labels_the_oos_figures_are_absent() -> None:
    report = evaluate(["a", "b"], ["a", "a"])
    assert report.oos_recall is None and report.accuracy == 0.5 and report.in_scope_accuracy == 0.5


def test_auroc_by_hand() -> None:
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5  # a tie counts half
    # positives {0.4, 0.8}, negatives {0.3, 0.6}: pairs won 0.4>0.3, 0.8>0.3, 0.8>0.6 -> 3 of 4
    assert auroc([0.4, 0.8], [0.3, 0.6]) == 0.75
    assert auroc([], [0.1]) is None


def test_abstain_auroc_in_the_report() -> None:
    report = evaluate(["a", OOS, OOS], ["a", OOS, "a"], abstain_scores=[0.1, 0.9, 0.4])
    assert report.abstain_auroc == 1.0
