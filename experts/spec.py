"""The specification of an expert: what an operator registers, what the manifest persists.

A spec is plain data. Runtime state (version, leases, embeddings) lives on `registry.Expert`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Expert names appear in URLs, metric labels and PEFT module keys, so they are kept to a safe alphabet.
EXPERT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_EXAMPLES = 2000
MAX_EXAMPLE_CHARS = 2000


class ExpertSpec(BaseModel):
    """An adapter expert: LoRA weights on the shared base model, plus the example queries it should get."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=EXPERT_NAME_PATTERN, description="Unique name; also the `model` to pin it.")
    description: str = Field(default="", max_length=2000)
    kind: Literal["adapter"] = "adapter"
    adapter_path: str = Field(min_length=1, max_length=4096, description="Directory with a PEFT LoRA adapter.")
    examples: list[str] = Field(
        min_length=1,
        max_length=MAX_EXAMPLES,
        description="Example queries this expert should answer; routing compares queries against them.",
    )

    @field_validator("examples")
    @classmethod
    def _examples_are_real_text(cls, examples: list[str]) -> list[str]:
        for example in examples:
            if not example.strip():
                raise ValueError("examples must not be empty strings")
            if len(example) > MAX_EXAMPLE_CHARS:
                raise ValueError(f"an example is longer than {MAX_EXAMPLE_CHARS} characters")
        return examples
