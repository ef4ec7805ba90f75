"""Every routing policy beats chance (10%) on CLINC150's 10 domains by a wide margin.

Real encoder, 20 examples per domain, 600 test queries; the bounds leave slack under the benchmark's
figures (README) so the test checks behaviour, not exact values.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors
from routers.calibration import FallbackRule
from routers.policies import POLICIES, create_router

CLINC = Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150"
pytestmark = pytest.mark.skipif(not CLINC.is_dir(), reason=f"CLINC150 not found at {CLINC}")


@pytest.fixture(scope="module")
def clinc() -> tuple[list[ExpertVectors], torch.Tensor, list[str]]:
    data = json.loads((CLINC / "data_full.json").read_text())
    domains = json.loads((CLINC / "domains.json").read_text())
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER))
    by_domain: dict[str, list[str]] = defaultdict(list)
    for text, intent in data["train"]:
        by_domain[domain_of[intent]].append(text)
    rng = random.Random(0)
    experts = [ExpertVectors(d, encoder.encode(rng.sample(texts, 20))) for d, texts in sorted(by_domain.items())]
    test = rng.sample(data["test"], 600)
    return experts, encoder.encode([t for t, _ in test]), [domain_of[i] for _, i in test]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_beats_chance_by_a_wide_margin(policy: str, clinc) -> None:  # noqa: ANN001
    experts, queries, labels = clinc
    router = create_router(policy, threshold=0.0)
    index = router.build_index(experts)
    if getattr(index, "fit", None) is not None:
        index.fit.result(timeout=120)
    decisions = router.decide_batch(queries, index, rule=FallbackRule(float("-inf")))
    accuracy = sum(d.expert == label for d, label in zip(decisions, labels, strict=True)) / len(labels)
    assert accuracy > 0.6, f"{policy}: {accuracy:.1%}"
