"""Documents, chunking, the exact index with segments and deletions, its store, and RRF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experts.errors import DocumentsRejected
from experts.retrieval.chunking import Chunk, chunk_document
from experts.retrieval.documents import Document, html_to_text, parse_jsonl, read_source
from experts.retrieval.index import DocumentIndex, Hit, Segment
from experts.retrieval.store import SegmentStore, new_segment_id
from server.retrieval.service import reciprocal_rank_fusion


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_chunks_respect_size_and_overlap_and_cover_every_word() -> None:
    text = "\n\n".join([words(40, "a"), words(400, "b"), words(10, "c")])
    chunks = chunk_document(Document(id="d", text=text, title="T"), words=100, overlap=20)
    assert [c.id for c in chunks] == [f"d#{i}" for i in range(len(chunks))]
    assert all(len(c.text.split()) <= 100 for c in chunks)
    for left, right in zip(chunks, chunks[1:], strict=False):
        assert left.text.split()[-20:] == right.text.split()[:20]
    covered = {w for c in chunks for w in c.text.split()}
    assert covered == set(text.split())
    assert chunks[0].embedding_text().startswith("T\n\n")


def test_short_paragraphs_pack_into_one_chunk_and_no_overlap_only_tail() -> None:
    chunks = chunk_document(Document(id="d", text="one two\n\nthree four"), words=100, overlap=20)
    assert [c.text for c in chunks] == ["one two three four"]
    exact = chunk_document(Document(id="d", text=words(100)), words=100, overlap=20)
    assert len(exact) == 1  # the overlap alone never makes a chunk


def test_jsonl_parsing_is_strict() -> None:
    docs = parse_jsonl(b'{"id": "a", "text": "x", "title": "A", "metadata": {"k": 1}}\n\n{"id": "b", "text": "y"}\n')
    assert [(d.id, d.title, d.metadata) for d in docs] == [("a", "A", {"k": 1}), ("b", "", {})]
    for bad, message in [(b'{"id": "a"}', "text"), (b'{"id": "a", "text": "x"}\n[1]', "line 2"),
                         (b'{"id": "a", "text": "x", "extra": 1}', "unknown"), (b"", "no documents"),
                         (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}', "twice"), (b"\xff", "UTF-8")]:
        with pytest.raises(DocumentsRejected, match=message):
            parse_jsonl(bad)


def test_html_keeps_the_main_content_and_the_title() -> None:
    page = ("<html><head><title>json &mdash; JSON</title><style>p{}</style></head><body>"
            "<div class='nav'>Navigation index modules</div><div role='main'><h1>json</h1>"
            "<p>Encode and <b>decode</b> JSON.</p><script>var x;</script><p>Second.</p></div></body></html>")
    title, text = html_to_text(page)
    assert title == "json — JSON"
    assert text == "json\n\nEncode and decode JSON.\n\nSecond."


def test_directory_reading_uses_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "b.html").write_text("<title>B</title><main><p>beta</p></main>")
    (tmp_path / "c.bin").write_bytes(b"\x00")
    docs = read_source(tmp_path)
    assert [(d.id, d.title) for d in docs] == [("b.html", "B"), ("sub/a.md", "a")]
    assert read_source(tmp_path, ["**/*.md"])[0].id == "sub/a.md"
    with pytest.raises(DocumentsRejected):
        read_source(tmp_path / "missing")


def segment(doc_ids: list[str], vectors: torch.Tensor) -> Segment:
    chunks = tuple(Chunk(id=f"{d}#0", doc_id=d, text=d) for d in doc_ids)
    return Segment(id=new_segment_id(), chunks=chunks, vectors=torch.nn.functional.normalize(vectors, dim=-1))


def test_exact_search_matches_a_full_sort() -> None:
    torch.manual_seed(0)
    vectors = torch.randn(500, 16)
    index = DocumentIndex([segment([f"d{i}" for i in range(500)], vectors)], {}, 16)
    query = torch.nn.functional.normalize(torch.randn(16), dim=0)
    hits = index.search(query, 10)
    expected = torch.argsort(index.matrix @ query, descending=True)[:10].tolist()
    assert [h.chunk.doc_id for h in hits] == [f"d{i}" for i in expected]
    assert index.search(query, 10_000)[-1].score == pytest.approx(float((index.matrix @ query).min()))


def test_deletions_apply_to_older_segments_only_so_ids_can_come_back() -> None:
    first = segment(["a", "b"], torch.eye(4)[:2])
    index = DocumentIndex([first], {}, 4).without_documents(["a"], new_segment_id())
    assert set(index.document_chunks) == {"b"} and index.size == 1
    again = index.with_segment(segment(["a"], torch.eye(4)[2:3]))
    assert set(again.document_chunks) == {"a", "b"}
    rebuilt = DocumentIndex(again.segments, again.state()["deleted"], 4)  # what a restart does
    assert [c.id for c in rebuilt.chunks] == [c.id for c in again.chunks]
    assert torch.equal(rebuilt.matrix, again.matrix)


def test_segments_round_trip_and_orphans_are_collected(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    written = segment(["a", "b"], torch.randn(2, 8))
    store.write("exp", written, "enc")
    read = store.read("exp", written.id)
    assert read.chunks == written.chunks and torch.equal(read.vectors, written.vectors)
    (tmp_path / "exp" / ".staging-x").mkdir()
    (tmp_path / "gone" / "seg-5").mkdir(parents=True)
    store.collect({"exp": {written.id}})
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
    assert [p.name for p in (tmp_path / "exp").iterdir()] == [f"seg-{written.id}"]
    store.discard("exp", {written.id})
    assert not (tmp_path / "exp").exists()


def test_reciprocal_rank_fusion() -> None:
    def hits(*ids: str) -> list[Hit]:
        return [Hit(Chunk(id=i, doc_id=i, text=i), 1.0 - n / 10) for n, i in enumerate(ids)]

    a = [("A", h) for h in hits("x", "y", "z")]
    b = [("B", h) for h in hits("y", "w")]
    fused = reciprocal_rank_fusion([a, b], k=60, top_k=10)
    scores = {(e, h.chunk.id): s for e, h, s in fused}
    assert scores[("A", "x")] == pytest.approx(1 / 61) and scores[("B", "w")] == pytest.approx(1 / 62)
    # The same chunk id in two retrievers stays two entries; a chunk in both lists of one retriever adds up.
    assert ("A", "y") in scores and ("B", "y") in scores
    doubled = reciprocal_rank_fusion([a, a], k=60, top_k=1)
    assert doubled[0][1].chunk.id == "x" and doubled[0][2] == pytest.approx(2 / 61)
    # Ties (rank 1 in each list) go to the higher similarity.
    assert [e for e, _, _ in fused[:2]] == ["A", "B"] and fused[0][1].score >= fused[1][1].score


def test_retrieval_metrics_by_hand() -> None:
    from experts.retrieval.ranking_metrics import document_ranking, ndcg_at_k, recall_at_k

    ranking = document_ranking(["a", "a", "x", "b", "y"])
    assert ranking == ["a", "x", "b", "y"]
    assert recall_at_k(ranking, {"a", "b"}, 2) == 0.5 and recall_at_k(ranking, {"a", "b"}, 3) == 1.0
    # relevant at ranks 1 and 3 of an ideal 1, 2: (1 + 1/2) / (1 + 1/log2(3))
    assert ndcg_at_k(ranking, {"a", "b"}, 10) == pytest.approx(1.5 / (1 + 1 / 1.5849625007211562))
    assert ndcg_at_k(["b", "a"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], {"a"}, 10) == 0.0 and recall_at_k([], set(), 5) == 0.0
