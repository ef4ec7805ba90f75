"""OpenAI-compatible endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`, `/v1/models`,
`/v1/embeddings`), and Switchyard's own `/v1/route` and `/v1/retrieve`."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from server.api.deps import AdminAccess, InferenceAccess, State, caller_namespace
from server.chat.conversation import session_key, turns_of
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FeedbackOut,
    FeedbackRequest,
    ModelCard,
    ModelList,
    ResponsesRequest,
    RetrieveRequest,
    RetrieveResponse,
    RouteRequest,
    RouteResponse,
    ScoredExpertOut,
)
from server.routing.record import routing_headers
from server.routing.service import AUTO_MODEL, MIXTURE_JOIN

api = APIRouter(prefix="/v1", tags=["openai"])
inference = [InferenceAccess]  # every endpoint but feedback, which changes routing and needs the admin token


def _session(request: Request, state: State, user: str | None) -> str | None:
    """The request's session key within its caller's namespace; None when session affinity is off."""
    if state.routing.sessions is None:
        return None
    return session_key(request.headers, user, caller_namespace(request, state))


@api.post("/chat/completions", response_model=None, dependencies=inference)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           state: State) -> JSONResponse | StreamingResponse:
    session = _session(request, state, body.user)
    run = await state.chat.start(body, session)
    if body.stream:
        # The background close covers a client that disconnects before the first byte is sent.
        return StreamingResponse(state.chat.stream(run), media_type="text/event-stream", headers=run.headers,
                                 background=BackgroundTask(run.close))
    completion = await state.chat.complete(run)
    return JSONResponse(completion.model_dump(), headers=run.headers)


@api.post("/completions", response_model=None, dependencies=inference)
async def completions(body: CompletionRequest, request: Request, state: State) -> JSONResponse | StreamingResponse:
    """A raw prompt (or a list), routed on its text or pinned by `model`; the first prompt's decision is in
    the headers and the body, each prompt's on its own choices."""
    session = _session(request, state, body.user)
    first = await state.completions.open(body, body.prompts()[0], session)
    if body.stream:
        return StreamingResponse(state.completions.stream(body, first, session), media_type="text/event-stream",
                                 headers=first.headers, background=BackgroundTask(first.close))
    completion = await state.completions.complete(body, first, session)
    return JSONResponse(completion.model_dump(exclude_none=True), headers=first.headers)


@api.post("/responses", response_model=None, dependencies=inference)
async def responses(body: ResponsesRequest, request: Request, state: State) -> JSONResponse | StreamingResponse:
    """The stateless subset of the Responses API: nothing is stored."""
    session = _session(request, state, body.user)
    generation = await state.responses.open(body, session)
    if body.stream:
        return StreamingResponse(state.responses.stream(body, generation), media_type="text/event-stream",
                                 headers=generation.headers, background=BackgroundTask(generation.close))
    response = await state.responses.complete(body, generation)
    return JSONResponse(response.model_dump(mode="json", by_alias=True, exclude_none=True),
                        headers=generation.headers)


@api.get("/models", dependencies=inference)
async def list_models(state: State) -> ModelList:
    created = int(state.started_at)
    cards = [
        ModelCard(id=AUTO_MODEL, created=created, kind="router", description=(
            "routes each request to the best expert, or the generalist. Mixtures of mixable experts: model "
            f"'a{MIXTURE_JOIN}b' (equal weights) or extra_body {{'experts': {{'a': 0.7, 'b': 0.3}}}}"
            + (f"; auto mixes up to {state.routing.mixture.max_experts} experts scoring within "
               f"{state.routing.mixture.margin} of the best" if state.routing.mixture.enabled else ""))),
        ModelCard(id=state.settings.routing.generalist_name, created=created, kind="generalist", mixable=True,
                  description=f"the base model alone ({state.backend.model_id})"),
    ]
    for expert in sorted(state.registry.snapshot.experts.values(), key=lambda e: e.name):
        cards.append(ModelCard(id=expert.name, created=int(expert.registered_at), kind=expert.spec.kind,
                               description=expert.spec.description, capabilities=list(expert.spec.capabilities),
                               mixable=expert.spec.kind == "adapter"))
    return ModelList(data=cards)


@api.post("/route", dependencies=inference)
async def route(body: RouteRequest, request: Request, state: State) -> JSONResponse:
    """The decision without generating: for a `query`, or for the last turn of `messages` in context.
    A session key (header or `user`) is read, never written: a dry run changes no session."""
    turns = turns_of(body)
    session = session_key(request.headers, body.user, caller_namespace(request, state))
    decision, snapshot, routing_ms = await state.routing.rank(turns, body.top_n, session)
    info, _ = state.routing.planned_record(decision, snapshot, routing_ms)
    ranking = [ScoredExpertOut(name=s.name, score=s.score) for s in decision.ranking]
    response = RouteResponse(query=turns[-1].text, decision=info, ranking=ranking)
    return JSONResponse(response.model_dump(), headers=routing_headers(info))


@api.post("/retrieve", dependencies=inference)
async def retrieve(body: RetrieveRequest, state: State) -> JSONResponse:
    """Routed (`model="auto"`) or pinned retrieval: passages with ids, scores and metadata, and the decision."""
    started = time.monotonic()
    turns = turns_of(body)
    retrieval = await state.retrieval.retrieve(body.model, turns, body.top_k, body.fuse)
    try:
        response = RetrieveResponse(query=turns[-1].text, model=retrieval.info.expert, data=retrieval.passages,
                                    switchyard=retrieval.info)
    finally:
        retrieval.release()
    state.metrics.served("retrieve", retrieval.info.expert, "ok", time.monotonic() - started)
    return JSONResponse(response.model_dump(), headers=routing_headers(retrieval.info))


_EMBEDDING_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": EmbeddingRequest.model_json_schema()}}}}


@api.post("/embeddings", dependencies=inference, response_model=EmbeddingResponse, openapi_extra=_EMBEDDING_BODY)
async def embeddings(request: Request, state: State) -> Response:
    """An `EmbeddingResponse`. Admitted before its body is read, so a refused request (429) costs no
    parsing, and serialised off the event loop: a flood of the largest requests cannot take the loop from
    routing."""
    started = time.monotonic()
    async with state.embeddings.admitted():
        body = EmbeddingRequest.model_validate_json(await request.body())
        model, content = await state.embeddings.embed(body)
    state.metrics.served("embeddings", model, "ok", time.monotonic() - started)
    return Response(content, media_type="application/json")


@api.post("/feedback", status_code=201, dependencies=[AdminAccess])
async def feedback(body: FeedbackRequest, state: State) -> FeedbackOut:
    """Say which expert (or 'generalist') should have answered `query`; routing learns it at once.

    It changes routing for every user, so it needs the admin token like any other registry change. Given
    a conversation, its last user turn (the one that was misrouted) becomes the example.
    """
    return await state.feedback.submit(turns_of(body)[-1].text, body.expert)
