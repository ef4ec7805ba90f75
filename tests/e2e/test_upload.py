"""Adapter uploads through the admin API: archive in, expert registered from it, bad archives refused."""

from __future__ import annotations

import io
import zipfile

import httpx
import openai
import pytest

from tests.support.helpers import assert_error, expert_body
from tests.support.server_process import REPO

pytestmark = pytest.mark.e2e


def zipped_adapter(name: str = "math", extra: dict[str, bytes] | None = None, skip: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in (REPO / "demo" / "adapters" / name).iterdir():
            if path.name != skip:
                archive.write(path, f"{name}/{path.name}")
        for member, content in (extra or {}).items():
            archive.writestr(member, content)
    return buffer.getvalue()


def test_upload_then_register_then_serve(admin: httpx.Client, client: openai.OpenAI) -> None:
    uploaded = admin.post("/admin/adapters/arith", content=zipped_adapter(),
                          headers={"content-type": "application/zip"})
    assert uploaded.status_code == 201, uploaded.text
    path = uploaded.json()["adapter_path"]
    examples = ["Add 3 and 4 apples together.", "How many legs do 5 spiders have?"]
    assert admin.post("/admin/experts", json=expert_body("arith", path, examples)).status_code == 201
    # The registry keeps its own copy: deleting the upload does not affect the registered expert.
    assert admin.delete("/admin/adapters/arith").status_code == 204
    reply = client.chat.completions.create(
        model="arith", messages=[{"role": "user", "content": "Tom has 4 boxes of 6 eggs. How many eggs?"}],
        temperature=0, max_tokens=48)
    assert "####" in reply.choices[0].message.content
    assert admin.delete("/admin/experts/arith").status_code == 204


def test_bad_uploads_are_refused_and_leave_nothing(admin: httpx.Client, http: httpx.Client, server) -> None:  # noqa: ANN001
    uploads = server.directory / "data" / "adapters" / "uploads"
    before = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    pickled = zipped_adapter(skip="adapter_model.safetensors", extra={"math/adapter_model.bin": b"pickle"})
    assert_error(admin.post("/admin/adapters/pickled", content=pickled), 400, "adapter_rejected")
    assert_error(admin.post("/admin/adapters/garbage", content=b"not an archive"), 400, "adapter_rejected")
    assert_error(admin.post("/admin/adapters/huge", content=b"0" * 6_000_000), 413, "request_too_large")
    assert_error(admin.post("/admin/adapters/Bad..Name", content=zipped_adapter()), 400)
    assert_error(http.post("/admin/adapters/anon", content=zipped_adapter()), 401)
    after = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    assert after == before
