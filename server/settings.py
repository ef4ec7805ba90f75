"""Settings: built once in the entry point and passed down; never read from the environment at import.

Sources, highest priority first: keyword arguments (the CLI's flags), `SWITCHYARD_*` environment
variables, the YAML file named by `--config` or `SWITCHYARD_CONFIG`, then the defaults below. Nested
values use `__` in environment variables, e.g. `SWITCHYARD_ROUTER_PARAMS__K=5`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from experts.models import EMBEDDED_BASE
from routers.encoder import EMBEDDED_ENCODER


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
    router_params: dict[str, Any] = Field(default_factory=lambda: {"k": 3, "aggregation": "mean"})
    fallback_threshold: float = Field(0.3, description="below this best score the generalist answers")

    # Adapter residency (as vLLM's max_loras / max_cpu_loras): on the device, in host memory, else disk
    max_loras: int = Field(8, ge=1, description="adapters kept on the device at once")
    max_cpu_loras: int = Field(16, ge=0, description="further adapters kept in host memory")
    max_batch_size: int = Field(16, ge=1, description="requests decoded together (continuous batching)")

    # Experts
    adapter_roots: list[Path] = Field(default_factory=list, description="directories adapters may load from")
    max_adapter_rank: int = 64
    seed_experts: Path | None = Field(None, description="YAML of experts registered on first start")

    encoder_int8: bool = Field(False, description="dynamic int8 quantisation of the query encoder (CPU)")

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

    # Limits
    max_request_bytes: int = 1_000_000
    max_upload_bytes: int = Field(64_000_000, description="adapter archive uploads (POST /admin/adapters/...)")
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    default_top_p: float = 0.95

    # Security
    admin_token: SecretStr | None = None
    insecure_dev_admin: bool = Field(False, description="allow admin endpoints without a token (dev only)")

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

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


_PATH_KEYS = ("data_dir", "model_cache_dir", "seed_experts")


def _resolve_relative_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in a config file are relative to that file, so a config works from any working directory."""
    out = dict(values)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = str((base / out[key]).resolve())
    if isinstance(out.get("adapter_roots"), list):
        out["adapter_roots"] = [str((base / p).resolve()) for p in out["adapter_roots"]]
    return out
