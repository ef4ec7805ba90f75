"""Grounded chat: a chat routed (or pinned) to a retriever answers from that retriever's passages.

The passages go into a system message ahead of the conversation, with their ids; the answer is written
by the retriever's paired `generator` (an adapter expert) or by the generalist. Small models do not
always cite, so when an answer mentions no passage id the server appends a `Sources:` line listing the
passages it was given; the citations are also returned as structured data.
"""

from __future__ import annotations

from dataclasses import dataclass

from experts.registry import Expert, ExpertRegistry, Lease
from server.failures import Conflict
from server.protocol import Citation, RoutingInfo
from server.retrieval.service import Retrieval, RetrievalService

INSTRUCTIONS = (
    "Answer the user's question using the passages below. Cite each passage you use by its id in square "
    "brackets, for example [{example}]. If the passages do not contain the answer, say so.\n\n"
)


@dataclass
class Grounding:
    retrieval: Retrieval
    generator: Expert | None  # None: the generalist writes the answer
    generator_lease: Lease | None
    writer: str  # the name of the model that writes the answer (the generator's, or the generalist's)

    @property
    def adapter_key(self) -> str | None:
        return self.generator.backend_key if self.generator is not None else None

    def release(self) -> None:
        self.retrieval.release()
        if self.generator_lease is not None:
            self.generator_lease.release()

    def prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        passages = self.retrieval.passages
        example = passages[0].id if passages else "doc#0"
        context = "\n\n".join(f"[{p.id}] {p.title}\n{p.text}" for p in passages) or "(no passages found)"
        system = {"role": "system", "content": INSTRUCTIONS.format(example=example) + context}
        return [system, *messages]

    def raw_prompt(self, prompt: str) -> str:
        """A raw completion prompt grounded the same way: the instructions and passages, then the prompt."""
        (system, *_) = self.prompt([])
        return f"{system['content']}\n\n{prompt}"

    def sources_suffix(self, answer: str) -> str:
        """What to append so the answer cites its sources: nothing if it already cites one."""
        if not self.retrieval.passages or any(p.id in answer for p in self.retrieval.passages):
            return ""
        return "\n\nSources: " + " ".join(f"[{p.id}]" for p in self.retrieval.passages)

    def citations(self, answer: str) -> list[Citation]:
        return [Citation(id=p.id, document_id=p.document_id, expert=p.expert, title=p.title, score=p.score,
                         cited=p.id in answer) for p in self.retrieval.passages]


class GroundingService:
    def __init__(self, retrieval: RetrievalService, registry: ExpertRegistry, generalist_name: str) -> None:
        self._retrieval = retrieval
        self._registry = registry
        self._generalist_name = generalist_name

    async def prepare(self, expert: Expert, info: RoutingInfo, query: str) -> Grounding:
        """Retrieve passages for `query` from `expert` (leased by the caller) and lease its generator."""
        generator, lease = self._lease_generator(expert)
        try:
            retrieval = await self._retrieval.for_chat(expert, info, info.runner_up, query)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        writer = generator.name if generator is not None else self._generalist_name
        return Grounding(retrieval, generator, lease, writer)

    def _lease_generator(self, retriever: Expert) -> tuple[Expert | None, Lease | None]:
        name = retriever.spec.generator
        if name is None:
            return None, None
        generator = self._registry.snapshot.experts.get(name)
        if generator is None or generator.resource.files is None:
            raise Conflict(f"retriever {retriever.name!r} answers through generator {name!r}, which is not a "
                           "registered adapter expert; register it, or re-register the retriever without a generator",
                           "generator_unavailable", "model")
        return generator, self._registry.lease(generator)
