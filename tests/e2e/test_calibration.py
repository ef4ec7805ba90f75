"""Calibrated fallback through the admin API: fitted on labelled queries, applied and reported at once."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.e2e.test_admin import assert_error
from tests.serverproc import REPO

pytestmark = pytest.mark.e2e


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
    assert admin.get("/admin/calibration").json()["per_expert"] == body["per_expert"]

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
