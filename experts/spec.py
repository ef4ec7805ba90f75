"""The specification of an expert: what an operator registers, what the manifest persists.

A spec is plain data. Runtime state (version, leases, embeddings) lives on `registry.Expert`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from experts.unicode_text import reject_lone_surrogates

# Expert names appear in URLs, metric labels and PEFT module keys, so they are kept to a safe alphabet.
EXPERT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_EXAMPLES = 2000
MAX_EXAMPLE_CHARS = 2000
MAX_CAPABILITIES = 64
MAX_CAPABILITY_CHARS = 200
ExpertKind = Literal["adapter", "retriever"]
_RETRIEVER_FIELDS = ("encoder", "generator", "documents_path", "documents_include", "max_documents")


class ExpertSpec(BaseModel):
    """An expert and the example queries it should get. Two kinds:

    - `adapter`: LoRA weights on the shared base model (`adapter_path`).
    - `retriever`: an embedding model with its own document index (RouterRetriever's domain expert).
      Its documents are uploaded separately or read from `documents_path`; chat requests routed to it
      are answered by `generator` (an adapter expert) or the generalist, grounded in its passages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=EXPERT_NAME_PATTERN, description="Unique name; also the `model` to pin it.")
    description: str = Field(default="", max_length=2000)
    kind: ExpertKind = "adapter"
    adapter_path: str | None = Field(None, min_length=1, max_length=4096,
                                     description="adapter: directory with a PEFT LoRA adapter")
    encoder: str | None = Field(None, min_length=1, max_length=4096,
                                description="retriever: embedding model (local dir or 'embedded:...'); "
                                            "default: the shared query encoder")
    generator: str | None = Field(None, pattern=EXPERT_NAME_PATTERN,
                                  description="retriever: adapter expert that writes grounded answers; "
                                              "default: the generalist")
    documents_path: str | None = Field(None, min_length=1, max_length=4096,
                                       description="retriever: directory (within document roots) to index")
    documents_include: list[str] | None = Field(None, max_length=32, description="retriever: glob patterns")
    max_documents: int | None = Field(None, ge=1, description="retriever: index at most this many files")
    examples: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description="Example queries this expert should answer; routing compares queries against them.",
    )
    capabilities: list[str] = Field(
        default_factory=list,
        max_length=MAX_CAPABILITIES,
        description="Short phrases of what this expert handles ('refund a payment', 'freeze account'); "
                    "routing scores them beside the examples, and they alone make an expert routable.",
    )

    @field_validator("examples")
    @classmethod
    def _examples_are_real_text(cls, examples: list[str]) -> list[str]:
        return _real_texts(examples, "examples", MAX_EXAMPLE_CHARS)

    @field_validator("capabilities")
    @classmethod
    def _capabilities_are_short_phrases(cls, capabilities: list[str]) -> list[str]:
        return _real_texts([c.strip() for c in capabilities], "capabilities", MAX_CAPABILITY_CHARS)

    def routing_texts(self) -> list[str]:
        """What routing embeds for this expert: its examples, then its capabilities (in that order, so a
        vector's position says which one it is)."""
        return [*self.examples, *self.capabilities]

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: object) -> object:
        return reject_lone_surrogates(data)

    @model_validator(mode="after")
    def _fields_match_kind(self) -> ExpertSpec:
        if not self.examples and not self.capabilities:
            raise ValueError("an expert needs examples or capabilities (or both)")
        if len(set(self.capabilities)) != len(self.capabilities):
            raise ValueError("capabilities must not repeat")
        if self.kind == "adapter":
            if self.adapter_path is None:
                raise ValueError("an adapter expert needs adapter_path")
            given = [f for f in _RETRIEVER_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{given} apply to retriever experts only")
        elif self.adapter_path is not None:
            raise ValueError("a retriever expert has no adapter_path (pair it with one through generator)")
        if self.generator is not None and self.generator == self.name:
            raise ValueError("a retriever cannot be its own generator")
        return self


def _real_texts(texts: list[str], field: str, max_chars: int) -> list[str]:
    for text in texts:
        if not text.strip():
            raise ValueError(f"{field} must not be empty strings")
        if len(text) > max_chars:
            raise ValueError(f"an entry of {field} is longer than {max_chars} characters")
    return texts
