"""Retriever experts end to end: background indexing, routed and pinned retrieval, fusion, embeddings
through the official client, grounded chat with citations, live document changes, and refusals that
change nothing. Two small corpora (gardening, astronomy) keep it fast; real MiniLM, real SmolLM2."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.contract]

DATA = REPO / "tests" / "data"
GARDEN_EXAMPLES = [
    "How often should I water my tomato plants?", "When is the best time to prune roses?",
    "How do I get rid of aphids on my plants?", "What should I put in a compost heap?",
    "How high should I mow the lawn?", "When should I start seeds indoors?",
    "Which vegetables grow well in shade?", "How do I improve clay soil in my garden?",
]
SPACE_EXAMPLES = [
    "How many moons does Jupiter have?", "What is a black hole?", "Why does the Moon have phases?",
    "What telescope should a beginner buy?", "Why is Mars red?", "What causes a solar eclipse?",
    "How far away is the nearest star?", "What is the largest planet in the solar system?",
]


def documents(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def wait_for_job(admin: httpx.Client, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = admin.get(f"/admin/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"indexing job {job_id} did not finish in {timeout} s")


def register(admin: httpx.Client, name: str, examples: list[str], docs: list[dict], **extra: object) -> dict:
    response = admin.post("/admin/experts", json={"name": name, "kind": "retriever", "description": f"{name} docs",
                                                  "examples": examples, "documents": docs, **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "indexing" and body["job"]["chunks_total"] >= len(docs)
    job = wait_for_job(admin, body["job"]["id"])
    assert job["state"] == "done", job
    assert job["chunks_done"] == job["chunks_total"] and job["progress"] == 1.0
    return job


@pytest.fixture(scope="module")
def retrievers(admin: httpx.Client) -> Iterator[list[str]]:
    register(admin, "garden", GARDEN_EXAMPLES, documents("garden"))
    register(admin, "space", SPACE_EXAMPLES, documents("space"), generator="support")
    try:
        yield ["garden", "space"]
    finally:
        for name in ("garden", "space", "garden-twin"):
            admin.delete(f"/admin/experts/{name}")


def retrieve(http: httpx.Client, query: str, model: str = "auto", **extra: object) -> httpx.Response:
    return http.post("/v1/retrieve", json={"query": query, "model": model, **extra})


def test_retrievers_are_listed_as_models(retrievers: list[str], client: openai.OpenAI, admin: httpx.Client) -> None:
    kinds = {m.id: m.model_extra["kind"] for m in client.models.list().data}
    assert kinds["garden"] == "retriever" and kinds["space"] == "retriever"
    listed = {e["name"]: e for e in admin.get("/admin/experts").json()["data"]}
    assert listed["garden"]["state"] == "ready"
    assert listed["garden"]["index"]["documents"] == len(documents("garden"))
    assert listed["space"]["generator"] == "support"


def test_routed_retrieval_picks_the_domain_and_the_right_passage(retrievers: list[str], http: httpx.Client) -> None:
    for query, expert, doc in [
        ("How do I stop aphids eating my roses' new shoots?", "garden", "aphids"),
        ("Which gas giant is the largest planet in the solar system?", "space", "jupiter"),
        ("How long is the lunar cycle from new moon to new moon?", "space", "moonphases"),
    ]:
        response = retrieve(http, query, top_k=3)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["switchyard"]["kind"] == "retriever"
        assert body["model"] == expert and body["switchyard"]["retrievers"] == [expert], body["switchyard"]
        assert response.headers["x-switchyard-expert"] == expert
        passages = body["data"]
        assert len(passages) == 3 and all(p["expert"] == expert for p in passages)
        assert passages[0]["document_id"] == doc and passages[0]["id"] == f"{doc}#0"
        assert passages[0]["metadata"]["source"] == expert
        assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)


def test_pinned_retrieval_searches_only_that_retriever(retrievers: list[str], http: httpx.Client) -> None:
    body = retrieve(http, "Which planet has the Great Red Spot storm?", model="garden", top_k=2).json()
    assert body["switchyard"]["router"] == "pinned"
    assert [p["expert"] for p in body["data"]] == ["garden", "garden"]


def test_close_scores_fuse_two_retrievers(retrievers: list[str], admin: httpx.Client, http: httpx.Client) -> None:
    # A twin with the same examples ties with `space` on every query: the router cannot tell them apart.
    register(admin, "garden-twin", SPACE_EXAMPLES, documents("garden"))
    try:
        body = retrieve(http, "Why is Mars red?", top_k=6).json()
        info = body["switchyard"]
        assert info["fused"] is True and sorted(info["retrievers"]) == ["garden-twin", "space"]
        assert "reciprocal-rank fusion" in info["reason"]
        assert {p["expert"] for p in body["data"]} == {"garden-twin", "space"}
        assert all(p["fused_score"] is not None for p in body["data"])
        assert body["data"][0]["document_id"] == "mars"  # the best passage survives fusion
    finally:
        assert admin.delete("/admin/experts/garden-twin").status_code == 204


def test_embeddings_through_the_official_client(retrievers: list[str], client: openai.OpenAI,
                                                http: httpx.Client) -> None:
    routed = client.embeddings.create(model="auto", input=["What is a black hole?", "Why is Mars red?"])
    assert routed.model == "space" and len(routed.data) == 2
    vector = routed.data[0].embedding
    assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1.0) < 1e-3
    assert routed.usage.prompt_tokens > 0
    pinned = client.embeddings.create(model="garden", input="What is a black hole?", encoding_format="float")
    assert pinned.model == "garden"
    assert max(abs(a - b) for a, b in zip(pinned.data[0].embedding, vector, strict=True)) < 1e-4
    raw = http.post("/v1/embeddings", json={"model": "garden", "input": "compost", "encoding_format": "base64"})
    decoded = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert len(decoded) == 384 * 4
    assert raw.json()["switchyard"]["kind"] == "retriever"


def test_grounded_chat_cites_passages(retrievers: list[str], client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="garden", messages=[{"role": "user", "content": "How should I water tomatoes?"}],
        max_tokens=40, temperature=0)
    info = completion.model_extra["switchyard"]
    assert info["kind"] == "retriever" and info["generator"] == "base" and info["retrievers"] == ["garden"]
    citations = completion.model_extra["citations"]
    assert citations and citations[0]["document_id"] == "tomatoes"
    answer = completion.choices[0].message.content
    assert any(c["id"] in answer for c in citations)  # cited by the model, or by the Sources line
    assert any(c["cited"] for c in citations)


def test_grounded_structured_output_still_parses(retrievers: list[str], client: openai.OpenAI) -> None:
    """A grammar-shaped answer gets no `Sources:` line (it would break the JSON); citations keep their field."""
    schema = {"type": "object", "properties": {"advice": {"type": "string"}}, "required": ["advice"],
              "additionalProperties": False}
    completion = client.chat.completions.create(
        model="garden", messages=[{"role": "user", "content": "How should I water tomatoes?"}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "advice", "schema": schema}})
    assert set(json.loads(completion.choices[0].message.content)) == {"advice"}
    assert completion.model_extra["citations"][0]["document_id"] == "tomatoes"


def test_grounded_chat_streams_through_the_paired_generator(retrievers: list[str], client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "How many moons does Jupiter have?"}],
        max_tokens=30, temperature=0, stream=True)
    chunks = list(stream)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    info = final.model_extra["switchyard"]
    assert info["expert"] == "space" and info["generator"] == "support"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(c["id"] in text for c in final.model_extra["citations"])


def test_documents_added_and_deleted_live(retrievers: list[str], admin: httpx.Client, http: httpx.Client) -> None:
    before = admin.get("/admin/experts/garden").json()["version"]
    line = json.dumps({"id": "bees", "title": "Bees", "text": "Plant lavender, borage and foxgloves to bring "
                       "bumblebees and honeybees to the garden; they pollinate squash and beans."})
    response = admin.post("/admin/retrievers/garden/documents", content=line + "\n",
                          headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 202, response.text
    assert wait_for_job(admin, response.json()["id"])["state"] == "done"
    top = retrieve(http, "Which flowers attract bumblebees?", model="garden", top_k=1).json()["data"][0]
    assert top["document_id"] == "bees"
    duplicate = admin.post("/admin/retrievers/garden/documents", content=line, headers={"content-type": "text/plain"})
    assert duplicate.status_code == 400 and duplicate.json()["error"]["code"] == "invalid_documents"
    deleted = admin.delete("/admin/retrievers/garden/documents/bees")
    assert deleted.status_code == 200 and deleted.json()["version"] > before
    top = retrieve(http, "Which flowers attract bumblebees?", model="garden", top_k=1).json()["data"][0]
    assert top["document_id"] != "bees"
    assert admin.delete("/admin/retrievers/garden/documents/bees").status_code == 404


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"query": "   "}, 400, "empty_query"),
    ({"query": "roses", "top_k": 0}, 400, "top_k_out_of_range"),
    ({"query": "roses", "top_k": 10_000}, 400, "top_k_out_of_range"),
    ({"query": "roses", "model": "nope"}, 404, "model_not_found"),
    ({"query": "roses", "model": "sql"}, 400, "not_a_retriever"),
])
def test_retrieve_refusals(retrievers: list[str], http: httpx.Client, body: dict, status: int, code: str) -> None:
    response = http.post("/v1/retrieve", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_bad_registrations_change_nothing(retrievers: list[str], admin: httpx.Client, tmp_path: Path) -> None:
    before = admin.get("/admin/experts").json()
    base = {"name": "broken", "kind": "retriever", "examples": ["anything"]}
    cases = [
        ({**base, "documents": [{"id": "a", "text": ""}]}, 400),
        ({**base, "documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 400),
        ({**base}, 400),  # no documents at all
        ({**base, "documents": [{"id": "a", "text": "x"}], "encoder": str(tmp_path)}, 400),  # outside encoder roots
        ({**base, "documents_path": "/etc"}, 400),  # outside document roots
        ({**base, "adapter_path": str(REPO / "demo" / "adapters" / "sql")}, 400),
        ({**base, "name": "garden", "documents": [{"id": "a", "text": "x"}]}, 409),
    ]
    for body, status in cases:
        response = admin.post("/admin/experts", json=body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    bad_jsonl = admin.post("/admin/documents/broken", content=b'{"id": "a", "text": "ok"}\n{not json}\n')
    assert bad_jsonl.status_code == 400 and "line 2" in bad_jsonl.json()["error"]["message"]
    assert admin.get("/admin/experts").json() == before


def test_generator_unavailable_is_a_clear_conflict(retrievers: list[str], admin: httpx.Client,
                                                   client: openai.OpenAI) -> None:
    register(admin, "garden-twin", GARDEN_EXAMPLES, documents("garden")[:2], generator="no-such-adapter")
    try:
        with pytest.raises(openai.APIStatusError) as error:
            client.chat.completions.create(model="garden-twin", messages=[{"role": "user", "content": "roses?"}],
                                           max_tokens=5)
        assert error.value.status_code == 409
        assert error.value.body["code"] == "generator_unavailable"
    finally:
        admin.delete("/admin/experts/garden-twin")


def test_jsonl_upload_then_register(retrievers: list[str], admin: httpx.Client, http: httpx.Client) -> None:
    uploaded = admin.post("/admin/documents/space-upload", content=(DATA / "space.jsonl").read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["documents"] == len(documents("space"))
    response = admin.post("/admin/experts", json={"name": "space-upload", "kind": "retriever",
                                                  "examples": ["What is a telescope aperture?"],
                                                  "documents_path": uploaded.json()["documents_path"]})
    assert response.status_code == 202, response.text
    try:
        assert wait_for_job(admin, response.json()["job"]["id"])["state"] == "done"
        top = retrieve(http, "telescope aperture", model="space-upload", top_k=1).json()["data"][0]
        assert top["document_id"] == "telescopes"
    finally:
        admin.delete("/admin/experts/space-upload")


def test_indexes_survive_a_crash_without_re_embedding(tmp_path: Path) -> None:
    config = write_config(tmp_path, seed_experts=[])
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    query = {"query": "When should I prune roses?", "model": "garden", "top_k": 4}
    first = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        with httpx.Client(base_url=first.base_url, headers=auth, timeout=60) as admin:
            register(admin, "garden", GARDEN_EXAMPLES, documents("garden"))
            assert admin.delete("/admin/retrievers/garden/documents/lawn").status_code == 200
            before = admin.post("/v1/retrieve", json=query).json()["data"]
    finally:
        first.stop(signal.SIGKILL)
    orphan = tmp_path / "data" / "retrievers" / "garden" / "seg-1"  # as if a crash hit mid-indexing
    orphan.mkdir()

    second = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        with httpx.Client(base_url=second.base_url, headers=auth, timeout=60) as admin:
            after = admin.post("/v1/retrieve", json=query).json()["data"]
            assert after == before and "lawn" not in {p["document_id"] for p in after}
            assert admin.get("/admin/experts/garden").json()["index"]["documents"] == len(documents("garden")) - 1
            metrics = admin.get("/metrics").text
            assert "switchyard_indexed_chunks_total 0.0" in metrics  # nothing was embedded again
        assert not orphan.exists()
    finally:
        second.stop()


def test_a_retriever_with_its_own_encoder_and_refused_encoders(retrievers: list[str], admin: httpx.Client,
                                                               server: ServerProcess, http: httpx.Client) -> None:
    from experts.encoders.query import EMBEDDED_ENCODER, resolve_encoder

    encoders = server.directory / "encoders"  # type: ignore[attr-defined]
    own = encoders / "minilm-copy"
    shutil.rmtree(own, ignore_errors=True)
    shutil.copytree(resolve_encoder(EMBEDDED_ENCODER), own)
    register(admin, "space-own", SPACE_EXAMPLES, documents("space"), encoder=str(own))
    try:
        assert admin.get("/admin/experts/space-own").json()["index"]["encoder"] == str(own)
        top = retrieve(http, "Why is Mars red?", model="space-own", top_k=1).json()["data"][0]
        assert top["document_id"] == "mars"
    finally:
        admin.delete("/admin/experts/space-own")
    pickled = encoders / "pickled"
    shutil.rmtree(pickled, ignore_errors=True)
    shutil.copytree(own, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")  # only a pickle-format weight file
    for encoder in (str(pickled), "nobody/not-cached-model", str(encoders / "missing")):
        response = admin.post("/admin/experts", json={"name": "bad-encoder", "kind": "retriever", "examples": ["x"],
                                                      "documents": documents("space"), "encoder": encoder})
        assert response.status_code == 400, (encoder, response.text)
        assert response.json()["error"]["code"] in ("encoder_rejected",), response.text
    assert "bad-encoder" not in {e["name"] for e in admin.get("/admin/experts").json()["data"]}
