"""Routing feedback: "this query should have gone to X" becomes an example of X, at once and undoably.

Each piece of feedback is recorded (manifest table `feedback`) and applied as a new registry version:
an expert's examples grow (the adapter is shared, not reloaded), or the query joins the generalist's
examples, which make similar queries fall back. Undo removes the example again, as another version.
"""

from __future__ import annotations

from experts.errors import ExpertNotFound
from experts.manifest import FeedbackRecord, Manifest
from experts.registry import ExpertRegistry
from routers.labelled_data import GENERALIST_LABEL
from server.failures import Conflict, NotFound
from server.protocol import FeedbackOut


def _out(record: FeedbackRecord, version: int | None = None) -> FeedbackOut:
    return FeedbackOut(id=record.id, target=record.target, query=record.text, created_at=record.created_at,
                       undone=record.undone_at is not None, registry_version=version)


class FeedbackService:
    def __init__(self, registry: ExpertRegistry, manifest: Manifest, generalist_name: str) -> None:
        self._registry = registry
        self._manifest = manifest
        self._generalist_names = {GENERALIST_LABEL, generalist_name}

    def _target(self, expert: str) -> str:
        if expert in self._generalist_names:
            return GENERALIST_LABEL
        if expert not in self._registry.snapshot.experts:
            raise NotFound(f"no expert named {expert!r}", "expert_not_found", "expert")
        return expert

    async def submit(self, query: str, expert: str) -> FeedbackOut:
        target = self._target(expert)
        feedback_id = self._manifest.add_feedback(target, query)
        try:
            version = await self._apply(target, add=[query])
        except BaseException:
            self._manifest.delete_feedback(feedback_id)
            raise
        return _out(self._manifest.feedback(feedback_id)[0], version)

    async def undo(self, feedback_id: int) -> FeedbackOut:
        records = self._manifest.feedback(feedback_id)
        if not records:
            raise NotFound(f"no feedback with id {feedback_id}", "feedback_not_found")
        record = records[0]
        if record.undone_at is not None:
            raise Conflict(f"feedback {feedback_id} was already undone", "already_undone")
        try:
            version = await self._apply(record.target, remove=[record.text])
        except ExpertNotFound:
            version = None  # the expert is gone, and the example with it
        self._manifest.mark_feedback(feedback_id, undone=True)
        return _out(self._manifest.feedback(feedback_id)[0], version)

    def list(self) -> list[FeedbackOut]:
        return [_out(r) for r in self._manifest.feedback()]

    async def _apply(self, target: str, add: list[str] | None = None, remove: list[str] | None = None) -> int:
        if target == GENERALIST_LABEL:
            return await self._registry.update_generalist_examples(add or (), remove or ())
        expert = await self._registry.update_examples(target, add or (), remove or ())
        return expert.version
