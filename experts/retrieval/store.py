"""Segments on disk: the chunks and their embeddings, so a restart never re-embeds.

Layout: `<root>/<expert>/seg-<id>/` holding `chunks.jsonl`, `vectors.safetensors` and `meta.json`. A
segment is written to a temporary directory and renamed into place, so it is either whole or absent;
the manifest names the segments an expert uses, and segments it does not name are garbage collected.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from experts.errors import DocumentsRejected
from experts.retrieval.chunking import Chunk
from experts.retrieval.index import Segment


class SegmentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, expert: str, segment_id: int) -> Path:
        return self.root / expert / f"seg-{segment_id}"

    def write(self, expert: str, segment: Segment, encoder: str) -> None:
        final = self._path(expert, segment.id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=final.parent))
        try:
            with open(staging / "chunks.jsonl", "w", encoding="utf-8") as out:
                for chunk in segment.chunks:
                    out.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            vectors = segment.vectors.detach().to("cpu").contiguous()
            save_file({"vectors": vectors}, str(staging / "vectors.safetensors"))
            meta = {"count": len(segment.chunks), "dim": int(segment.vectors.shape[1]), "encoder": encoder}
            (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise DocumentsRejected(f"the index could not be written to {final.parent}: {exc}") from exc

    def read(self, expert: str, segment_id: int, device: str | torch.device = "cpu") -> Segment:
        path = self._path(expert, segment_id)
        try:
            with open(path / "chunks.jsonl", encoding="utf-8") as lines:
                chunks = tuple(Chunk(**json.loads(line)) for line in lines if line.strip())
            vectors = load_file(str(path / "vectors.safetensors"))["vectors"].to(device)
        except (OSError, KeyError, ValueError) as exc:
            raise DocumentsRejected(f"segment {path} is missing or damaged: {exc}") from exc
        if vectors.shape[0] != len(chunks):
            raise DocumentsRejected(f"segment {path} has {len(chunks)} chunks but {vectors.shape[0]} vectors")
        return Segment(id=segment_id, chunks=chunks, vectors=vectors)

    def discard(self, expert: str, segment_ids: set[int]) -> None:
        """Delete these segments of `expert` (those a drained index version no longer shares)."""
        for segment_id in segment_ids:
            shutil.rmtree(self._path(expert, segment_id), ignore_errors=True)
        expert_dir = self.root / expert
        if expert_dir.is_dir() and not any(expert_dir.iterdir()):
            expert_dir.rmdir()

    def collect(self, keep: Mapping[str, set[int]]) -> None:
        """Delete every segment and staging leftover not named in `keep` ({expert: segment ids}).

        Only at start-up, before any indexing job runs: a crash between writing a segment and committing
        the manifest leaves such orphans.
        """
        for expert_dir in (p for p in self.root.iterdir() if p.is_dir()):
            wanted = keep.get(expert_dir.name, set())
            for entry in expert_dir.iterdir():
                if entry.name.startswith("seg-") and entry.name[4:].isdigit() and int(entry.name[4:]) in wanted:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            if not any(expert_dir.iterdir()):
                expert_dir.rmdir()


_last_segment_id = 0


def new_segment_id() -> int:
    """A strictly increasing id from the wall clock (nanoseconds), so ids keep growing across restarts.

    Deletions are stamped from the same clock: a document deleted at t hides its chunks in segments
    created before t only.
    """
    global _last_segment_id
    _last_segment_id = max(time.time_ns(), _last_segment_id + 1)
    return _last_segment_id
