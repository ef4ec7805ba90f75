"""The chunking rule, one function, so indexing and its documentation never disagree.

A document is split into paragraphs (blank lines). Paragraphs are packed, in order, into chunks of at
most `words` words; a paragraph longer than that is cut at word boundaries. Consecutive chunks of a
document share `overlap` words, so a sentence cut at a boundary is whole in one of them. The document's
title is prepended to the text that is embedded (not to the text returned), because titles carry much of
a passage's topic. Chunk ids are `<document id>#<n>`, n counting from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experts.retrieval.documents import Document

DEFAULT_CHUNK_WORDS = 150
DEFAULT_CHUNK_OVERLAP = 30


@dataclass(frozen=True)
class Chunk:
    id: str
    doc_id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def embedding_text(self) -> str:
        return f"{self.title}\n\n{self.text}" if self.title else self.text


def chunk_document(document: Document, words: int = DEFAULT_CHUNK_WORDS,
                   overlap: int = DEFAULT_CHUNK_OVERLAP) -> list[Chunk]:
    if words < 1 or not 0 <= overlap < words:
        raise ValueError("need words >= 1 and 0 <= overlap < words")
    pieces: list[list[str]] = []
    current: list[str] = []
    fresh = 0  # words in `current` that no emitted chunk holds yet (the rest is overlap)
    for paragraph in document.text.split("\n\n"):
        tokens = paragraph.split()
        if not tokens:
            continue
        if fresh and len(current) + len(tokens) > words:  # keep paragraphs whole where they fit
            pieces.append(current)
            current, fresh = (current[-overlap:] if overlap else []), 0
        while len(current) + len(tokens) > words:
            room = words - len(current)
            current, tokens = current + tokens[:room], tokens[room:]
            pieces.append(current)
            current, fresh = (current[-overlap:] if overlap else []), 0
        current, fresh = current + tokens, fresh + len(tokens)
    if fresh:
        pieces.append(current)
    return [
        Chunk(id=f"{document.id}#{n}", doc_id=document.id, text=" ".join(piece), title=document.title,
              metadata=document.metadata)
        for n, piece in enumerate(pieces)
    ]


def chunk_documents(documents: list[Document], words: int = DEFAULT_CHUNK_WORDS,
                    overlap: int = DEFAULT_CHUNK_OVERLAP) -> list[Chunk]:
    return [chunk for document in documents for chunk in chunk_document(document, words, overlap)]
