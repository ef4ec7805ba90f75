"""Documents a retriever indexes: parsed from JSONL uploads or read from an allowed directory.

Parsing is strict and happens before any embedding, so a bad upload is refused whole (with the line or
file that failed) and nothing half-indexed ever becomes visible.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from experts.errors import DocumentsRejected

MAX_DOCUMENT_ID_CHARS = 512
MAX_DOCUMENT_CHARS = 2_000_000
DEFAULT_INCLUDE = ("**/*.html", "**/*.htm", "**/*.md", "**/*.txt", "**/*.rst")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def document_from_mapping(raw: object, where: str) -> Document:
    """Validate one JSON object (`id`, `text`, optional `title`, `metadata`) into a `Document`."""
    if not isinstance(raw, dict):
        raise DocumentsRejected(f"{where}: a document must be a JSON object")
    unknown = set(raw) - {"id", "text", "title", "metadata"}
    if unknown:
        raise DocumentsRejected(f"{where}: unknown fields {sorted(unknown)}")
    doc_id, text = raw.get("id"), raw.get("text")
    title, metadata = raw.get("title") or "", raw.get("metadata") or {}
    if not isinstance(doc_id, str) or not doc_id.strip() or len(doc_id) > MAX_DOCUMENT_ID_CHARS:
        raise DocumentsRejected(f"{where}: 'id' must be a non-empty string of at most {MAX_DOCUMENT_ID_CHARS} chars")
    if not isinstance(text, str) or not text.strip():
        raise DocumentsRejected(f"{where}: 'text' must be a non-empty string")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise DocumentsRejected(f"{where}: 'text' is longer than {MAX_DOCUMENT_CHARS} characters")
    if not isinstance(title, str) or not isinstance(metadata, dict):
        raise DocumentsRejected(f"{where}: 'title' must be a string and 'metadata' an object")
    return Document(id=doc_id, text=text, title=title, metadata=metadata)


def parse_jsonl(data: bytes) -> list[Document]:
    """One JSON document per line; blank lines are skipped. Ids must be unique within the upload."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DocumentsRejected(f"the upload is not UTF-8: {exc}") from exc
    documents = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentsRejected(f"line {number}: not valid JSON ({exc.msg})") from exc
        documents.append(document_from_mapping(raw, f"line {number}"))
    return check_unique(documents)


def check_unique(documents: Sequence[Document]) -> list[Document]:
    if not documents:
        raise DocumentsRejected("no documents were given")
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            raise DocumentsRejected(f"document id {document.id!r} appears twice")
        seen.add(document.id)
    return list(documents)


def read_directory(root: Path, include: Sequence[str] = DEFAULT_INCLUDE,
                   max_files: int | None = None) -> list[Document]:
    """Read text, Markdown, reStructuredText and HTML files under `root` (sorted, so ids are stable).

    The document id is the path relative to `root`. Symbolic links that leave `root` are skipped.
    """
    resolved_root = root.resolve()
    paths = sorted({p for pattern in include for p in resolved_root.glob(pattern) if p.is_file()})
    documents = []
    for path in paths:
        if not path.resolve().is_relative_to(resolved_root):
            continue
        try:
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise DocumentsRejected(f"{path}: cannot be read ({exc})") from exc
        doc_id = path.relative_to(resolved_root).as_posix()
        if path.suffix.lower() in (".html", ".htm"):
            title, text = html_to_text(raw)
        else:
            title, text = path.stem, raw
        if text.strip():
            documents.append(Document(id=doc_id, text=text, title=title or path.stem, metadata={"path": doc_id}))
        if max_files is not None and len(documents) >= max_files:
            break
    if not documents:
        raise DocumentsRejected(f"no readable documents under {root} matching {list(include)}")
    return documents


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page, one paragraph per block element.

    When the page marks its main content (`<main>` or `role="main"`, as Sphinx and most doc generators
    do), only that part is kept, so navigation bars and sidebars do not pollute the chunks.
    """

    _SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    _BLOCKS = {"p", "div", "section", "article", "li", "dt", "dd", "pre", "tr", "br", "table",
               "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "dl"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title_parts: list[str] = []
        self.all_parts: list[str] = []
        self.main_parts: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, opens main content)
        self._skip = 0
        self._in_title = False
        self._main_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        if tag == "title":
            self._in_title = True
        opens_main = tag == "main" or dict(attrs).get("role") == "main"
        if tag not in {"br", "img", "hr", "meta", "link", "input"}:
            self._stack.append((tag, opens_main))
            self._main_depth += opens_main
        if tag in self._BLOCKS:
            self._emit("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        if tag == "title":
            self._in_title = False
        while self._stack:
            open_tag, opened_main = self._stack.pop()
            self._main_depth -= opened_main
            if open_tag == tag:
                break
        if tag in self._BLOCKS:
            self._emit("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._skip:
            self._emit(data)

    def _emit(self, text: str) -> None:
        self.all_parts.append(text)
        if self._main_depth > 0:
            self.main_parts.append(text)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page; see `_TextExtractor`."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    parts = parser.main_parts if "".join(parser.main_parts).strip() else parser.all_parts
    paragraphs = [" ".join(p.split()) for p in "".join(parts).split("\n\n")]
    title = " ".join("".join(parser.title_parts).split())
    return title, "\n\n".join(p for p in paragraphs if p)


def read_source(path: Path, include: Sequence[str] | None = None, max_files: int | None = None) -> list[Document]:
    """Documents from a JSONL file or a directory of text/Markdown/HTML files."""
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".ndjson"):
            raise DocumentsRejected(f"{path}: a documents file must be JSONL (.jsonl)")
        documents = parse_jsonl(path.read_bytes())
        return documents[:max_files] if max_files else documents
    if path.is_dir():
        return read_directory(path, include or DEFAULT_INCLUDE, max_files)
    raise DocumentsRejected(f"{path} does not exist")
