"""Settings: built once in the entry point and passed down, each part given its group; never read from the
environment at import.

Sources, highest priority first: keyword arguments (the CLI's flags), `SWITCHYARD_*` environment
variables, the YAML file named by `--config` or `SWITCHYARD_CONFIG`, then the defaults of the groups
(server/settings/groups.py). `Settings.load` is the one load path of every mode: one machine, `serve
--ray` and `serve deploy` (deploy/ray/serve.yaml) alike. A Ray replica gets the gateway's effective
settings (`Settings.transport`), never its own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from experts.encoders.pool import EncoderConfig
from server.settings.groups import (
    BackendSettings,
    GenerationSettings,
    LimitSettings,
    RetrievalSettings,
    RoutingSettings,
    ScaleOutSettings,
    SecuritySettings,
    ServerSettings,
)
from server.settings.keywords import checked_keywords
from server.settings.sources import environment_values, file_values, grouped, merged

__all__ = ["Settings", "checked_keywords", "config_file_from"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    scale_out: ScaleOutSettings = Field(default_factory=ScaleOutSettings)

    @classmethod
    def load(cls, config_file: Path | None = None, environ: Mapping[str, str] | None = None,
             **overrides: Any) -> Settings:
        """Settings from an optional YAML file, the environment and explicit overrides (grouped, or the
        flat keys of the previous release; None values are ignored, as an unset CLI flag)."""
        sources = [file_values(config_file)] if config_file is not None else []
        sources.append(environment_values(os.environ if environ is None else environ))
        sources.append(grouped(_without_none(overrides), "override"))
        return cls.model_validate(merged(*sources))

    @model_validator(mode="before")
    @classmethod
    def _regroup(cls, data: Any) -> Any:
        """`Settings(max_loras=4)` and a replica's transported settings alike: flat keys find their group."""
        return grouped(data, "argument") if isinstance(data, Mapping) else data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that only make sense together: every broken pair is named at start, in one message,
        rather than found by the first request that needs it."""
        g, b, r = self.generation, self.backend, self.retrieval
        problems = []
        if g.default_max_tokens > g.max_tokens_limit:
            problems.append(f"generation.default_max_tokens ({g.default_max_tokens}) exceeds "
                            f"generation.max_tokens_limit ({g.max_tokens_limit})")
        if g.max_prompt_tokens >= b.max_context_tokens:
            problems.append(f"generation.max_prompt_tokens ({g.max_prompt_tokens}) leaves no room for an answer "
                            f"in backend.max_context_tokens ({b.max_context_tokens})")
        if g.max_tokens_limit >= b.max_context_tokens:
            problems.append(f"generation.max_tokens_limit ({g.max_tokens_limit}) must be below "
                            f"backend.max_context_tokens ({b.max_context_tokens})")
        if r.chunk_overlap >= r.chunk_words:
            problems.append(f"retrieval.chunk_overlap ({r.chunk_overlap}) must be below retrieval.chunk_words "
                            f"({r.chunk_words})")
        if r.default_top_k > r.max_top_k:
            problems.append(f"retrieval.default_top_k ({r.default_top_k}) exceeds retrieval.max_top_k "
                            f"({r.max_top_k})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def transport(self) -> dict[str, Any]:
        """The effective settings as plain data with secrets revealed: what the gateway hands each Ray
        replica (inside the cluster), so every process runs with one set of settings."""
        plain = self.model_dump(mode="json")
        security = self.security
        plain["security"]["admin_token"] = security.admin_token.get_secret_value() if security.admin_token else None
        plain["security"]["api_keys"] = [key.get_secret_value() for key in security.api_keys]
        return plain

    def encoder_config(self) -> EncoderConfig:
        """The shared query encoder's configuration (its export cache lives under the model cache)."""
        return self.routing.encoder_config(self.server.model_cache_dir)


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides without their unset values (a CLI flag not given), inside groups too."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _without_none(value)
        if value is not None and value != {}:
            out[key] = value
    return out


def config_file_from(flag: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings file: `--config`, else SWITCHYARD_CONFIG. One rule for every mode, so `serve --ray` and
    `serve deploy` read the file `switchyard config check` checked."""
    environ = os.environ if environ is None else environ
    return flag or (Path(environ["SWITCHYARD_CONFIG"]) if environ.get("SWITCHYARD_CONFIG") else None)

