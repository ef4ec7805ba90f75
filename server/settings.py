"""Settings: built once in the entry point and passed down; never read from the environment at import.

Sources, highest priority first: keyword arguments (the CLI's flags), `SWITCHYARD_*` environment
variables, the YAML file named by `--config` or `SWITCHYARD_CONFIG`, then the defaults below. Nested
values use `__` in environment variables, e.g. `SWITCHYARD_ROUTER_PARAMS__K=5`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from experts.encoders.pool import EncoderConfig
from experts.encoders.query import EMBEDDED_ENCODER
from experts.models import EMBEDDED_BASE
from routers.conversation import ContextParams
from routers.mixture import MAX_MIXTURE, MixtureParams
from routers.policies import POLICIES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", env_nested_delimiter="__", extra="forbid")

    # Network
    host: str = "127.0.0.1"
    port: int = 8000

    # Storage: the manifest lives in data_dir; converted models are cached in model_cache_dir.
    data_dir: Path = Path("var")
    model_cache_dir: Path = Path.home() / ".cache" / "switchyard" / "models"

    # Models
    base_model: str = Field(EMBEDDED_BASE, description="'embedded:...', a Hugging Face id or a local dir")
    encoder_model: str = Field(EMBEDDED_ENCODER, description="query encoder: 'embedded:...', id or dir")
    backend: Literal["transformers", "vllm"] = "transformers"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_context_tokens: int = 2048
    generalist_name: str = Field("base", description="the `model` name that forces the base model alone")

    # Routing
    router: str = "knn"
    router_params: dict[str, Any] = Field(default_factory=dict, description="the policy's own parameters "
                                          "(knn: k, aggregation, ...); checked against the policy when the "
                                          "settings load")
    fallback_threshold: float = Field(0.3, description="below this best score the generalist answers")
    context_params: dict[str, Any] = Field(
        default_factory=dict, description="conversation routing (routers/conversation.py ContextParams): "
        "temperature, switch_probability, decay, neutral_similarity, max_turns; calibrating on conversations "
        "refits temperature and switch_probability")
    mixture_max_experts: int = Field(1, ge=1, le=MAX_MIXTURE, description="routed mixtures: the most experts "
                                     "`auto` mixes when their scores are close (1: off, the default)")
    mixture_margin: float = Field(0.05, ge=0.0, description="routed mixtures: experts scoring within this of the "
                                  "best take part")
    mixture_temperature: float = Field(0.05, gt=0.0, description="routed mixtures: weights are "
                                       "softmax(score / temperature)")
    embedding_cache_size: int = Field(10_000, ge=0, description="query embeddings cached by exact text "
                                      "(earlier conversation turns, repeated queries)")
    session_affinity: bool = Field(True, description="remember each session's expert (OpenAI's `user` field "
                                   "or the x-switchyard-session header)")
    session_max_entries: int = Field(10_000, ge=1, description="sessions remembered at once (least recent go)")
    session_ttl_seconds: float = Field(1800.0, gt=0, description="a session's expert is forgotten after this "
                                       "long unused")

    # Adapter residency (as vLLM's max_loras / max_cpu_loras): on the device, in host memory, else disk
    max_loras: int = Field(8, ge=1, description="adapters kept on the device at once")
    max_cpu_loras: int = Field(16, ge=0, description="further adapters kept in host memory")
    max_batch_size: int = Field(16, ge=1, description="requests decoded together (continuous batching)")
    stacked_lora: bool = Field(True, description="transformers: run mixed-adapter batches as stacked, gathered "
                                                 "matmuls (one pass); false: PEFT's per-sample adapter_names")
    prefix_caching: bool = Field(True, description="transformers: keep the chat template's fixed opening's KV "
                                 "cache per adapter and prefill only the rest of each prompt")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM: memory fraction for weights and "
                                          "KV cache (on CPU, of host memory)")

    # Experts
    adapter_roots: list[Path] = Field(default_factory=list, description="directories adapters may load from")
    max_adapter_rank: int = 64
    seed_experts: list[Path] = Field(default_factory=list,
                                     description="YAML files of experts registered on first start (one or a list)")

    # Retrievers: where documents and retriever encoders may be read from, chunking, search and fusion
    document_roots: list[Path] = Field(default_factory=list, description="directories retrievers may index")
    encoder_roots: list[Path] = Field(default_factory=list, description="directories retriever encoders may load from")
    chunk_words: int = Field(150, ge=16, le=1024, description="words per chunk (see experts/retrieval/chunking.py)")
    chunk_overlap: int = Field(30, ge=0, description="words shared by consecutive chunks of a document")
    indexing_batch_size: int = Field(32, ge=1)
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(100, ge=1)
    chat_passages: int = Field(4, ge=1, le=16, description="passages put in a grounded chat's prompt")
    fusion_margin: float = Field(0.05, ge=0.0, description="fuse the two best retrievers below this score margin")
    rrf_k: int = Field(60, ge=1, description="reciprocal-rank fusion constant")

    encoder_runtime: Literal["torch", "onnx"] = Field(
        "onnx", description="what runs the shared encoder on CPU: ONNX Runtime (an export cached under "
        "model_cache_dir, the same embeddings) or PyTorch eager; on a GPU it is always PyTorch")
    encoder_int8: bool = Field(False, description="int8 weights for the shared encoder (about 2x the routing "
                               "rate under load with ONNX Runtime; embeddings move by ~0.01 cosine)")

    # Query encoder micro-batching
    encoder_max_batch: int = Field(64, ge=1)
    encoder_max_wait_ms: float = Field(2.0, ge=0.0)

    # Backpressure: generations running at once, more waiting, and beyond that 429 with Retry-After
    max_active_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=0)
    retry_after_seconds: int = Field(1, ge=1)
    request_timeout_seconds: float = Field(300.0, gt=0, description="a generation stops (length) after this")
    drain_seconds: float = Field(30.0, ge=0, description="on SIGTERM, time running streams get to finish")
    max_prompt_tokens: int = Field(1536, ge=1)
    # Bulk work (embeddings) runs one request at a time at low CPU priority (server/runtime/lanes.py); this many
    # more may wait, and beyond that 429. An embeddings request may hold at most this many tokens.
    max_queued_bulk_requests: int = Field(3, ge=0)
    max_embedding_tokens: int = Field(16_384, ge=1)

    # Limits
    max_request_bytes: int = 1_000_000
    max_upload_bytes: int = Field(64_000_000, description="adapter archives and document uploads (admin)")
    header_timeout_seconds: float = Field(10.0, gt=0, description="408 and close when request headers take longer")
    body_timeout_seconds: float = Field(60.0, gt=0, description="408 when a request body takes longer to arrive")
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    default_temperature: float = Field(0.7, ge=0.0, le=2.0)
    default_top_p: float = Field(0.95, gt=0.0, le=1.0)

    # Security
    admin_token: SecretStr | None = None
    insecure_dev_admin: bool = Field(False, description="allow admin endpoints without a token (dev only)")
    api_keys: list[SecretStr] = Field(default_factory=list, description="inference keys; when set, /v1/* "
                                      "needs `Authorization: Bearer <key>` (the admin token is not one)")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed (none by default)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, file_secret_settings

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from an optional YAML file, the environment and explicit overrides."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{config_file} must hold a mapping of settings")
            base = Path(config_file).resolve().parent
            file_values = _resolve_relative_paths(loaded, base)
        env_values = cls().model_dump(exclude_unset=True)
        return cls(**{**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}})

    @field_validator("admin_token")
    @classmethod
    def _admin_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty token (`-e SWITCHYARD_ADMIN_TOKEN="$T"` with `$T` unset) would match an empty bearer."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("admin_token is empty or blank; unset SWITCHYARD_ADMIN_TOKEN to keep the admin API "
                             "off, or set a real token")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_not_blank(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value().strip() for key in value):
            raise ValueError("api_keys holds an empty or blank key, which would match an empty bearer; remove it")
        return value

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

    def conversation_context(self) -> ContextParams:
        return ContextParams(**self.context_params)

    def mixture_params(self) -> MixtureParams:
        return MixtureParams(self.mixture_max_experts, self.mixture_margin, self.mixture_temperature)

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(self.encoder_model, self.encoder_runtime, self.encoder_int8,
                             self.model_cache_dir / "encoders")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that only make sense together: every broken pair is named at start, in one message,
        rather than found by the first request that needs it."""
        problems = []
        if self.default_max_tokens > self.max_tokens_limit:
            problems.append(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                            f"({self.max_tokens_limit})")
        if self.max_prompt_tokens >= self.max_context_tokens:
            problems.append(f"max_prompt_tokens ({self.max_prompt_tokens}) leaves no room for an answer in "
                            f"max_context_tokens ({self.max_context_tokens})")
        if self.max_tokens_limit >= self.max_context_tokens:
            problems.append(f"max_tokens_limit ({self.max_tokens_limit}) must be below max_context_tokens "
                            f"({self.max_context_tokens})")
        if self.chunk_overlap >= self.chunk_words:
            problems.append(f"chunk_overlap ({self.chunk_overlap}) must be below chunk_words ({self.chunk_words})")
        if self.default_top_k > self.max_top_k:
            problems.append(f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        if self.generalist_name == "auto" or not self.generalist_name.strip() or "+" in self.generalist_name:
            problems.append(f"generalist_name {self.generalist_name!r} must be a name other than 'auto', without "
                            "'+' (it joins a mixture's names)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("seed_experts", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str | Path) else value

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def checked_keywords(target: Callable[..., Any], params: Mapping[str, Any], owner: str,
                     fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`params` (a free-form settings mapping) checked against the keyword parameters of `target` (a policy
    or component class) when the settings load: unknown keys and values of the wrong type are named with
    the keys that are accepted, and `target` is built once with them so its own checks run too. Returns the
    values as `target` takes them ("4" from an environment variable becomes 4). `fixed` holds the
    arguments that other settings supply (a policy's threshold)."""
    fixed = dict(fixed or {})
    signature = inspect.signature(target)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    accepted = [name for name, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in fixed]
    listing = ", ".join(accepted) or "none"
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {owner} "
                         f"(accepted: {listing})")
    converted = {}
    for key, value in params.items():
        try:
            converted[key] = TypeAdapter(hints.get(key, Any)).validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ValueError(f"{key}: {value!r} is not valid for {owner}: {reason}") from None
    try:
        target(**fixed, **converted)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (accepted: {listing})") from None
    return converted


_PATH_KEYS = ("data_dir", "model_cache_dir")


def _resolve_relative_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in a config file are relative to that file, so a config works from any working directory."""
    out = dict(values)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = str((base / out[key]).resolve())
    if isinstance(out.get("seed_experts"), str):
        out["seed_experts"] = [out["seed_experts"]]
    for key in ("adapter_roots", "document_roots", "encoder_roots", "seed_experts"):
        if isinstance(out.get(key), list):
            out[key] = [str((base / p).resolve()) for p in out[key]]
    return out
