"""`/v1/embeddings`: vectors from a retriever's encoder, pinned by name or chosen by routing (`auto`).

With `auto` the first input routes (all inputs of one request share one encoder, so their vectors are
comparable); the generalist's name gives the server's shared query encoder. The response's `model` and
`switchyard` record say which encoder produced the vectors.

Embeddings are bulk work and never compete with routing (server/runtime/lanes.py): a request is admitted (one
encodes at a time, a few wait, the rest get 429), counted against a per-request token budget (400 over
it: retrying cannot help), and encoded on the low-priority bulk lane, by the shared encoder's twin when
the shared encoder was asked for.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch

from experts.encoders import TextEmbedder
from routers.conversation import Turn, routing_text
from server.failures import InvalidRequest
from server.protocol import (
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    RoutingInfo,
)
from server.retrieval.service import RetrievalService
from server.routing.record import searched_record, unrouted_record
from server.routing.service import AUTO_MODEL, RoutingService
from server.runtime.admission import Admission
from server.runtime.lanes import Lanes

MAX_INPUT_CHARS = 8000
BULK_BATCH = 8  # 8 inputs of 256 tokens: ~25 MB of attention activations per layer, not 200 MB at 64


class EmbeddingService:
    def __init__(self, retrieval: RetrievalService, routing: RoutingService, shared: TextEmbedder, lanes: Lanes,
                 admission: Admission, max_tokens: int) -> None:
        self._retrieval = retrieval
        self._routing = routing
        self._shared = shared
        self._lanes = lanes
        self._admission = admission
        self._max_tokens = max_tokens

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one of the bulk lane's places (429 at once when none is free) for the whole request."""
        slot = await self._admission.acquire()
        try:
            yield
        finally:
            slot.release()

    async def embed(self, request: EmbeddingRequest) -> tuple[str, bytes]:
        """Embed `request`'s inputs; call inside `admitted()`. Returns the encoder's name and the response's
        JSON, serialised on the bulk lane too: 64 vectors as JSON floats take the event loop tens of ms."""
        texts = self._check(request)
        version = self._routing.registry_version
        if request.model == self._routing.generalist_name:
            name, encoder = request.model, self._shared
            info = unrouted_record(name, "generalist", "the shared query encoder was requested by name",
                                               False, version)
        elif request.model == AUTO_MODEL:
            ranking, info, snapshot = await self._retrieval.route([Turn(routing_text(texts[0]))])
            expert = snapshot.experts[ranking[0].name]
            name, encoder = expert.name, expert.resource.encoder
            info = searched_record(info, [name], "its encoder embedded the inputs")
        else:
            expert = self._retrieval.retriever_named(request.model)
            name, encoder = expert.name, expert.resource.encoder
            info = unrouted_record(name, "retriever", "the retriever was pinned by name", False,
                                               version)
        assert encoder is not None
        if request.dimensions is not None and request.dimensions != encoder.dim:
            raise InvalidRequest(f"{name!r} embeds into {encoder.dim} dimensions; 'dimensions' cannot change that",
                                 "unsupported_dimensions", "dimensions")
        return name, await self._lanes.on_bulk(self._respond, encoder, texts, request.encoding_format, name, info)

    def _respond(self, encoder: TextEmbedder, texts: list[str], encoding: str, name: str, info: RoutingInfo) -> bytes:
        vectors, tokens = self._encode(encoder, texts)
        data = [Embedding(index=i, embedding=_format(v, encoding)) for i, v in enumerate(vectors)]
        usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddingResponse(data=data, model=name, usage=usage, switchyard=info).model_dump_json().encode()

    @staticmethod
    def _check(request: EmbeddingRequest) -> list[str]:
        texts = request.texts()
        if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"input must hold between 1 and {MAX_EMBEDDING_INPUTS} texts",
                                 "invalid_input", "input")
        for text in texts:
            if not text.strip() or len(text) > MAX_INPUT_CHARS:
                raise InvalidRequest(f"each input must be non-empty text of at most {MAX_INPUT_CHARS} characters",
                                     "invalid_input", "input")
        return texts

    def _encode(self, encoder: TextEmbedder, texts: list[str]) -> tuple[torch.Tensor, int]:
        """On the bulk lane: count, refuse over budget, then encode."""
        encoder = self._lanes.bulk_encoder_for(encoder)
        tokens = encoder.count_tokens(texts)
        if tokens > self._max_tokens:
            raise InvalidRequest(f"the inputs hold {tokens} tokens; one request may hold at most {self._max_tokens}",
                                 "too_many_tokens", "input")
        with torch.inference_mode():  # in small batches: bounded activation memory, no long uninterrupted call
            vectors = [encoder.encode(texts[i:i + BULK_BATCH]).float().cpu() for i in range(0, len(texts), BULK_BATCH)]
        return torch.cat(vectors), tokens


def _format(vector: torch.Tensor, encoding: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or base64 of little-endian float32 (the official client's
    default, which it decodes itself)."""
    if encoding == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
