"""The operator console in a real browser (Debian's Chromium driven by Playwright) against the real server.

An operator signs in with the admin token, registers an expert through the form (uploading its adapter),
sees it in the table, tries a query and sees it routed there with its bar highest and the answer streamed,
watches it appear in the live routing chart, evaluates a labelled file, and removes the expert. Each
section is saved as a screenshot under `var/screenshots/` (the test artefacts).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess

pytestmark = pytest.mark.e2e
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "var" / "screenshots"
EXPERT = "console-warehouse"
EXAMPLES = [
    "Write SQL against the warehouse_stock table to find bins holding fewer than ten pallets",
    "Which warehouse bins in aisle 7 are empty? Give me the SQL over warehouse_stock",
    "SQL to total the pallets per aisle in the warehouse_stock table",
]
QUERY = "SQL over warehouse_stock: which bins in aisle 3 hold fewer than five pallets?"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("SWITCHYARD_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium is missing at {CHROMIUM}; scripts/setup.sh installs it (apt, as root)")
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: object, server: ServerProcess) -> Iterator[object]:
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/console")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#experts-table tbody tr")
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


def adapter_archive(tmp_path: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(REPO / "demo" / "adapters" / "sql" / name, name)
    path = tmp_path / "warehouse-adapter.zip"
    path.write_bytes(buffer.getvalue())
    return path


def test_console_needs_the_admin_token(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as http:
        assert http.get("/console").headers["location"].endswith("/console/login")
        assert http.post("/console/login", data={"token": "wrong"}).status_code == 401
        signed_in = http.post("/console/login", data={"token": ADMIN_TOKEN})
        assert signed_in.status_code == 303
        assert "httponly" in signed_in.headers["set-cookie"].lower()
        assert "samesite=strict" in signed_in.headers["set-cookie"].lower()
        # The client now holds the session cookie. The cookie alone (which a cross-site form could send)
        # does not open the admin API; with the console's header it does.
        assert http.get("/admin/experts").status_code == 401
        assert http.get("/admin/experts", headers={"X-Switchyard-Console": "1"}).status_code == 200
        assert http.get("/console").status_code == 200
        assert http.post("/console/logout").status_code == 303
        assert http.get("/admin/experts", headers={"X-Switchyard-Console": "1"}).status_code == 401


def test_every_control_has_a_label_and_sections_work_from_the_keyboard(page: object) -> None:
    for control in page.locator("main input, main select, main textarea").all():
        control_id = control.get_attribute("id")
        assert control_id and page.locator(f"label[for='{control_id}']").count() == 1, control_id
    page.locator("header nav a[href='#live']").focus()
    page.keyboard.press("Enter")
    playwright_api.expect(page.locator("#live")).to_be_visible()
    playwright_api.expect(page.locator("#experts")).to_be_hidden()
    playwright_api.expect(page.locator("header nav a[href='#live']")).to_have_attribute("aria-current", "page")


def test_register_try_watch_evaluate_remove(page: object, admin: httpx.Client, demo_experts: list[dict],
                                            tmp_path: Path) -> None:
    expect = playwright_api.expect
    admin.delete(f"/admin/experts/{EXPERT}")  # a leftover from an interrupted run

    # A refusal shows the server's own message.
    page.get_by_label("Name", exact=True).fill(EXPERT)
    page.get_by_label("Example queries").fill("\n".join(EXAMPLES))
    page.get_by_label("or adapter path").fill("/etc")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#form-error")).to_contain_text("outside the allowed adapter roots")
    assert admin.get(f"/admin/experts/{EXPERT}").status_code == 404

    # Register through the form, uploading the adapter archive.
    page.get_by_label("or adapter path").fill("")
    page.get_by_label("Adapter archive").set_input_files(str(adapter_archive(tmp_path)))
    page.get_by_role("button", name="Register").click()
    row = page.locator(f"#experts-table tr[data-expert='{EXPERT}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("adapter")
    expect(row).to_contain_text("ready")
    expect(page.locator("#form-status")).to_contain_text(f"Registered {EXPERT}")
    assert admin.get(f"/admin/experts/{EXPERT}").json()["state"] == "ready"
    shot(page, "experts")

    # Try a query: routed to the new expert, its bar the highest, the answer streamed.
    page.get_by_role("link", name="Try a query").click()
    page.get_by_label("Query", exact=True).fill(QUERY)
    page.get_by_role("button", name="Route and answer").click()
    expect(page.locator("#try-decision")).to_contain_text(f"Routed to {EXPERT}")
    expect(page.locator("#try-answer")).not_to_be_empty(timeout=120_000)
    expect(page.locator("#try-submit")).to_be_enabled(timeout=120_000)
    bars = {bar.get_attribute("data-expert"): float(bar.get_attribute("data-score"))
            for bar in page.locator("#try-chart rect").all()}
    assert max(bars, key=bars.get) == EXPERT and len(bars) == len(admin.get("/admin/experts").json()["data"])
    assert "best" in page.locator(f"#try-chart rect[data-expert='{EXPERT}']").get_attribute("class")
    expect(page.locator("#try-chart line.threshold")).to_have_count(1)
    expect(page.locator("#try-answer")).to_have_attribute("data-expert", EXPERT)
    shot(page, "try")

    # A mixture typed in: the answer says which experts answered, with their weights.
    page.get_by_label("Mixture").fill("sql=3, math=1")
    page.get_by_role("button", name="Route and answer").click()
    expect(page.locator("#try-weights")).to_contain_text("Answered by a mixture: sql 0.75 · math 0.25",
                                                          timeout=120_000)
    expect(page.locator("#try-answer")).to_have_attribute("data-expert", "sql+math")
    expect(page.locator("#try-decision")).to_contain_text("Pinned to a mixture")
    shot(page, "try-mixture")
    page.get_by_label("Mixture").fill("")

    # Live routing: the chat's decision shows up in the chart, from the JSON statistics endpoint.
    page.get_by_role("link", name="Live routing").click()
    expect(page.locator(f"#live-chart rect[data-expert='{EXPERT}']").first).to_be_visible(timeout=10_000)
    expect(page.locator("#live-legend")).to_contain_text(EXPERT)
    shot(page, "live")

    # Evaluation: the same figures as the API gives for the same file.
    off_domain = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["off_domain"]
    rows = [{"text": q, "label": e["name"]} for e in demo_experts for q in e["held_out"][:4]]
    rows += [{"text": q, "label": "oos"} for q in off_domain[:4]]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in rows))
    report = admin.post("/admin/evaluate", json={"data": labelled.read_text()}).json()
    page.get_by_role("link", name="Evaluation").click()
    page.get_by_label("Labelled file").set_input_files(str(labelled))
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#eval-summary")).to_contain_text(f"{len(rows)} queries")
    expect(page.locator("#eval-summary")).to_contain_text(f"accuracy {100 * report['accuracy']:.1f}%")
    expect(page.locator("#eval-confusion tbody td")).to_have_count(len(report["labels"]) ** 2)
    shot(page, "evaluation")

    # Remove it; it leaves the table and the registry.
    page.get_by_role("link", name="Experts").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Remove {EXPERT}").click()
    expect(row).to_have_count(0)
    expect(page.locator("#form-status")).to_contain_text(f"Removed {EXPERT}")
    assert admin.get(f"/admin/experts/{EXPERT}").status_code == 404
