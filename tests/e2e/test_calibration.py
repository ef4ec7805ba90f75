"""Calibrated fallback through the admin API: fitted on labelled queries, applied and reported at once."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.support.helpers import assert_error
from tests.support.server_process import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.contract]


def labelled() -> list[dict]:
    demo = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())
    rows = [{"text": q, "label": e["name"]} for e in demo["experts"] for q in e["examples"] + e["held_out"]]
    rows += [{"text": q, "label": "generalist"} for q in demo["off_domain"]]
    return rows


def test_calibration_fits_applies_and_resets(admin: httpx.Client, http: httpx.Client) -> None:
    before = admin.get("/admin/calibration").json()
    assert before["calibrated"] is False and before["per_expert"] == {}
    fitted = admin.post("/admin/calibration", json={"examples": labelled()})
    assert fitted.status_code == 200, fitted.text
    body = fitted.json()
    assert body["calibrated"] and set(body["per_expert"]) == {"sql", "math", "support"}
    assert body["fitted_on"] == len(labelled()) and body["oos_recall"] == 1.0
    later = admin.get("/admin/calibration").json()
    assert later["per_expert"] == body["per_expert"] and later["fitted_on"] == body["fitted_on"]

    decision = http.post("/v1/route", json={"query": "Write SQL to count the orders per customer"}).json()["decision"]
    assert decision["expert"] == "sql"
    assert decision["threshold"] == pytest.approx(body["per_expert"]["sql"])  # the record shows what applied
    off = http.post("/v1/route", json={"query": "What is the capital of Australia?"}).json()["decision"]
    assert off["fallback"] is True

    reset = admin.delete("/admin/calibration").json()
    assert reset["calibrated"] is False
    decision = http.post("/v1/route", json={"query": "Write SQL to count the orders"}).json()["decision"]
    assert decision["threshold"] == pytest.approx(reset["threshold"])


def test_bad_calibration_data_is_refused(admin: httpx.Client) -> None:
    before = admin.get("/admin/calibration").json()
    assert_error(admin.post("/admin/calibration", json={"examples": [{"text": "x", "label": "nobody"}]}), 400,
                 "unknown_label")
    assert_error(admin.post("/admin/calibration", json={"examples": [{"text": "x", "label": "generalist"}]}), 400,
                 "calibration_data")
    assert_error(admin.post("/admin/calibration", json={"examples": []}), 400)
    assert admin.get("/admin/calibration").json() == before


def test_degenerate_calibration_is_refused_and_says_why(admin: httpx.Client) -> None:
    """One example once set the threshold for all traffic; four mislabelled ones turned the fallback off."""
    before = admin.get("/admin/calibration").json()
    one = assert_error(admin.post("/admin/calibration", json={"examples": [
        {"text": "SELECT the users", "label": "sql"}]}), 400, "calibration_data")
    assert "at least 20" in one["message"]
    mislabelled = [{"text": q, "label": "sql"} for q in ("What is the capital of Australia?", "Tell me a joke",
                                                         "Who won the 1998 World Cup?", "How tall is Everest?")]
    assert_error(admin.post("/admin/calibration", json={"examples": mislabelled}), 400, "calibration_data")
    lopsided = labelled() + [{"text": "Plant tomatoes in spring", "label": "math"}]
    lopsided = [r for r in lopsided if r["label"] != "support"] + [r for r in lopsided if r["label"] == "support"][:2]
    few = assert_error(admin.post("/admin/calibration", json={"examples": lopsided}), 400, "calibration_data")
    assert "'support' (2)" in few["message"]
    assert admin.get("/admin/calibration").json() == before

