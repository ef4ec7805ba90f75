"""The long-lived objects of one running server, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from experts.backends import Backend
from experts.manifest import Manifest
from experts.registry import ExpertRegistry
from routers.batching import MicroBatcher
from routers.encoder import QueryEncoder
from server.admission import Admission
from server.chat_service import ChatService
from server.console.sessions import ConsoleSessions
from server.embedding_service import EmbeddingService
from server.feedback_service import FeedbackService
from server.indexing_service import IndexingService
from server.lanes import Lanes
from server.metrics import Metrics
from server.retrieval_service import RetrievalService
from server.routing_service import RoutingService
from server.settings import Settings


@dataclass
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
    feedback: FeedbackService
    admission: Admission
    indexing: IndexingService
    retrieval: RetrievalService
    embeddings: EmbeddingService
    lanes: Lanes
    started_at: float
    console: ConsoleSessions = field(default_factory=ConsoleSessions)  # signed-in /console browsers
