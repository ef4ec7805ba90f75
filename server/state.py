"""The long-lived objects of one running server, built once by the app's lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from experts.backends import Backend
from experts.encoders.query import QueryEncoder
from experts.manifest import Manifest
from experts.registry import ExpertRegistry
from routers.batching import MicroBatcher
from server.chat.completions import CompletionService
from server.chat.responses import ResponsesService
from server.chat.service import ChatService
from server.console.logins import ConsoleSessions
from server.embeddings import EmbeddingService
from server.observability.metrics import Metrics
from server.retrieval.indexing import IndexingService
from server.retrieval.service import RetrievalService
from server.routing.feedback import FeedbackService
from server.routing.service import RoutingService
from server.runtime.admission import Admission
from server.runtime.lanes import Lanes
from server.settings import Settings


@dataclass(kw_only=True)
class AppState:
    settings: Settings
    metrics: Metrics
    encoder: QueryEncoder
    batcher: MicroBatcher
    backend: Backend
    registry: ExpertRegistry
    manifest: Manifest
    routing: RoutingService
    chat: ChatService
    completions: CompletionService
    responses: ResponsesService
    feedback: FeedbackService
    admission: Admission
    indexing: IndexingService
    retrieval: RetrievalService
    embeddings: EmbeddingService
    lanes: Lanes
    started_at: float
    console: ConsoleSessions = field(default_factory=ConsoleSessions)  # signed-in /console browsers
    follower: asyncio.Task[None] | None = None  # Ray gateways: keeps the registry up with the shared store
