"""Conversation-aware routing: a decision for the latest turn that reads the conversation so far.

Most follow-up turns carry no domain words ("Yes, two tickets please."), so a decision on the last user
message alone bounces between experts mid-conversation. Here the policy's scores for every user turn
become one decision through a filter run over the turns, oldest first:

- **A sticky belief over experts** (an HMM forward pass). Each turn is evidence: the likelihood of expert
  `i` is `exp((score_i - best) / temperature)`. Between turns the topic stays with probability
  `1 - switch_probability`. A turn whose words name a domain moves the belief at once (a topic switch);
  a vague turn barely moves it, so the conversation stays with its expert. Calibration fits both
  parameters on labelled conversations (`fit_context`).
- **Neutral turns carry no evidence.** Acknowledgements and closings ("Ok, thank you.", "Yes, that is
  correct.") sit close to generic examples that every expert has, and their nearest example decides the
  last-message router at random. A turn at least `neutral_similarity` close to one of a few dialogue-act
  phrases (`NEUTRAL_PHRASES`) is skipped, unless nothing else has been said yet.
- **The score the fallback rule reads** is a weighted mean of the chosen expert's per-turn scores since
  the conversation came to it, on the policy's own scale, so the calibrated thresholds apply unchanged
  and a conversation that drifts off every expert's domain still goes to the generalist. A turn weighs
  `decay` times the turn after it, times its own spread (best score minus the mean over experts): a
  vague follow-up ("And what about last year?") scores low for every expert and must not drag an
  established topic under its threshold, while a turn that names a domain counts fully.

The filter reads score matrices, so every policy (knn, centroid, prototypes, linear) gets the context
without knowing about it. It is a pure function of the turns and the index: two gateways that receive the
same `messages` make the same decision, because the previous expert is recomputed from the earlier turns
rather than remembered. A session store (server side) may pass the expert it remembers as `previous`,
which then holds the belief's mass before the last turn.

It is written once, batched over conversations (left-padded to a common number of turns): a request runs
a batch of one; calibration and the benchmark run every prefix of a dev set in one pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from routers.base import ContextSummary, Decision, Router, RoutingIndex
from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome

# Dialogue acts that say nothing about a domain: answers, thanks, confirmations, closings.
NEUTRAL_PHRASES = (
    "yes", "no", "ok", "okay", "sure", "thanks", "thank you", "thank you very much", "that's all",
    "no, that's all", "that's correct", "yes, that's right", "sounds good", "great", "perfect", "what else?",
    "any other options?", "something else", "no thanks", "bye", "goodbye", "please do",
    "I don't need anything else", "that works", "not right now",
)


@dataclass(frozen=True)
class ContextParams:
    """How the earlier turns count. `switch_probability` 1 with `max_turns` 1 reads the last message alone.

    `temperature`: how strongly one turn's score differences count as evidence (lower: stronger).
    `switch_probability`: prior chance that a turn changes topic (the belief's stickiness).
    `decay`: weight of a turn relative to the one after it, in the score the fallback rule reads.
    `neutral_similarity`: similarity to a neutral phrase above which a turn carries no evidence (> 1: off).
    `max_turns`: user turns read, newest first (bounds the cost of long conversations).
    `assistant_temperature`: the same as `temperature` for assistant turns (weaker evidence); inf: ignore
    assistant turns.
    """

    temperature: float = 0.05
    switch_probability: float = 0.1
    decay: float = 0.5
    neutral_similarity: float = 0.55
    max_turns: int = 8
    assistant_temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.assistant_temperature <= 0:
            raise ValueError("temperatures must be positive")
        if not 0.0 < self.switch_probability <= 1.0:
            raise ValueError("switch_probability must be in (0, 1]")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        if self.max_turns < 1:
            raise ValueError("max_turns must be at least 1")

    def as_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "switch_probability": self.switch_probability,
                "decay": self.decay, "neutral_similarity": self.neutral_similarity, "max_turns": self.max_turns,
                "assistant_temperature": self.assistant_temperature}


LAST_MESSAGE = ContextParams(switch_probability=1.0, decay=0.0, neutral_similarity=math.inf, max_turns=1,
                             assistant_temperature=math.inf)


@dataclass(frozen=True)
class ContextBatch:
    """The filter's outcome for the last turn of each conversation, before the fallback rule.

    `scores` [batch, experts]: what the decision ranks by and the fallback rule reads. `chosen`: the
    belief's argmax. `belief`: its probability. `previous`: the argmax before the last turn (-1: none).
    `turns`: user turns read; `neutral`: how many of them were skipped as neutral.
    """

    scores: torch.Tensor
    chosen: torch.Tensor
    belief: torch.Tensor
    previous: torch.Tensor
    turns: torch.Tensor
    neutral: torch.Tensor

    def outcome(self, row: int) -> str:
        """`single` (one user turn), `stayed` or `switched`, relative to the previous turn's expert."""
        previous = int(self.previous[row])
        if previous < 0:
            return "single"
        return "stayed" if previous == int(self.chosen[row]) else "switched"


def conversation_context(
    turn_scores: torch.Tensor, valid: torch.Tensor, neutral: torch.Tensor, params: ContextParams,
    session_previous: torch.Tensor | None = None, assistant: torch.Tensor | None = None,
) -> ContextBatch:
    """Run the filter over `turn_scores` [batch, turns, experts] (left-padded; `valid`, `neutral` and
    `assistant` are [batch, turns] masks; the last turn of each row is a user turn).

    Assistant turns are evidence too, weaker (`assistant_temperature`) and with no topic change of their
    own: they move the belief but not the chosen expert or the fallback's score. `session_previous`
    [batch] (or None; -1 for none) is an expert a session remembers: before the last turn the belief is
    set to it, as if every earlier turn had chosen it (so a client that sends only its latest message
    still stays with the session's expert).
    """
    batch, turns, experts = turn_scores.shape
    if batch == 0 or experts == 0:
        raise ValueError("need at least one conversation and one expert")
    # NumPy, not torch: the loop runs over turns on tiny arrays, where a torch op's fixed cost (several
    # microseconds) would dominate a request's routing time.
    scores = turn_scores.detach().float().cpu().numpy()
    valid_np = valid.cpu().numpy()
    replies = np.zeros_like(valid_np) if assistant is None else assistant.cpu().numpy() & valid_np
    neutral_np = neutral.cpu().numpy()
    if not (valid_np[:, -1] & ~replies[:, -1]).all():
        raise ValueError("every conversation must end with a user turn")
    relative = scores - scores.max(axis=2, keepdims=True)
    user_likelihood = np.exp(relative / params.temperature)
    reply_likelihood = np.exp(relative / params.assistant_temperature)  # all ones when it is inf
    spread = np.maximum(scores.max(axis=2) - scores.mean(axis=2), 1e-3) if experts > 1 else np.ones((batch, turns))
    remembered_expert = None if session_previous is None else session_previous.cpu().numpy()
    rows = np.arange(batch)
    belief = np.full((batch, experts), 1.0 / experts, dtype=np.float32)
    fused = np.zeros((batch, experts), dtype=np.float32)
    weight = np.zeros(batch, dtype=np.float32)
    evidence = np.zeros(batch, dtype=bool)  # a non-neutral turn has been read
    chosen = np.full(batch, -1, dtype=np.int64)
    previous = chosen.copy()
    read = np.zeros(batch, dtype=np.int64)
    skipped = np.zeros(batch, dtype=np.int64)
    stay = 1.0 - params.switch_probability
    for t in range(turns):
        reply = replies[:, t] & ~neutral_np[:, t]
        if reply.any():
            replied = belief * reply_likelihood[:, t]
            belief = np.where(reply[:, None], replied / replied.sum(axis=1, keepdims=True), belief)
        here = valid_np[:, t] & ~replies[:, t]  # a user turn
        if t == turns - 1 and remembered_expert is not None:
            remembered = here & (remembered_expert >= 0)
            if remembered.any():
                onehot = np.eye(experts, dtype=np.float32)[np.maximum(remembered_expert, 0)]
                belief = np.where(remembered[:, None], onehot, belief)
                chosen = np.where(remembered, remembered_expert, chosen)
                evidence = evidence | remembered
        counts = here & ~(neutral_np[:, t] & evidence)  # a neutral turn counts only before any evidence
        posterior = (stay * belief + params.switch_probability / experts) * user_likelihood[:, t]
        belief = np.where(counts[:, None], posterior / posterior.sum(axis=1, keepdims=True), belief)
        new_chosen = belief.argmax(axis=1)
        moved = counts & (new_chosen != chosen)  # the conversation came to a new expert: restart its score
        current, turn_spread = scores[:, t], spread[:, t]
        grown = turn_spread + params.decay * weight
        merged = (turn_spread[:, None] * current + (params.decay * weight)[:, None] * fused) / grown[:, None]
        fused = np.where(moved[:, None], current, np.where(counts[:, None], merged, fused))
        weight = np.where(moved, turn_spread, np.where(counts, grown, weight))
        previous = np.where(here & (chosen >= 0), chosen, previous)
        chosen = np.where(counts, new_chosen, chosen)
        evidence = evidence | (counts & ~neutral_np[:, t])
        read = read + here
        skipped = skipped + (here & ~counts)
    return ContextBatch(torch.from_numpy(fused.astype(np.float32)), torch.from_numpy(chosen),
                        torch.from_numpy(belief[rows, chosen].astype(np.float32)), torch.from_numpy(previous),
                        torch.from_numpy(read), torch.from_numpy(skipped))


def explain(result: ContextBatch, row: int, names: Sequence[str], from_session: bool) -> str:
    """The context's part of the decision, in words, for one conversation of `result`."""
    name = names[int(result.chosen[row])]
    turns, neutral = int(result.turns[row]), int(result.neutral[row])
    outcome = result.outcome(row)
    if outcome == "single":
        return "one user turn: no earlier context"
    previous = names[int(result.previous[row])] + (" (the session's expert)" if from_session else "")
    skipped = f", {neutral} of them neutral" if neutral else ""
    belief = f"{float(result.belief[row]):.2f}"
    if outcome == "stayed":
        return f"stayed with {previous}: belief {belief} over {turns} user turns{skipped}"
    return f"switched from {previous} to {name}: belief {belief} over {turns} user turns{skipped}"


def pack_turns(conversations: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad per-conversation matrices [turns_i, ...] into (stacked, valid) for the filter."""
    width = max(c.shape[0] for c in conversations)
    stacked = torch.zeros((len(conversations), width, *conversations[0].shape[1:]), dtype=conversations[0].dtype)
    valid = torch.zeros(len(conversations), width, dtype=torch.bool)
    for i, c in enumerate(conversations):
        stacked[i, width - c.shape[0]:] = c
        valid[i, width - c.shape[0]:] = True
    return stacked, valid


def neutral_turns(vectors: torch.Tensor, neutral_vectors: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """[turns] True where a turn's embedding is at least `threshold` close to a neutral phrase."""
    if neutral_vectors is None or neutral_vectors.shape[0] == 0 or not math.isfinite(threshold):
        return torch.zeros(vectors.shape[0], dtype=torch.bool)
    return (vectors.to(neutral_vectors.dtype) @ neutral_vectors.T).max(dim=1).values >= threshold


class Turn(NamedTuple):
    """One message routing reads: a user turn, or an assistant turn (`assistant`), by its text."""

    text: str
    assistant: bool = False


ASSISTANT_CHARS = 300  # an assistant turn's opening names its topic; the rest would only cost encoder time
# What routing reads of any one text. Query encoders read at most a few hundred tokens (MiniLM: 256 word
# pieces, about 1,000 characters of English), so nothing past this changes a decision; a text cut here
# before it is cached, hashed or scored keeps a 1 MB message from costing 1 MB in the embedding cache.
ROUTING_TEXT_CHARS = 4000


def routing_text(text: str) -> str:
    """The part of `text` routing reads."""
    return text[:ROUTING_TEXT_CHARS]


def window(turns: Sequence[Turn], max_turns: int) -> list[Turn]:
    """The turns from the `max_turns`-th newest user turn on, assistant turns before it dropped; the
    conversation must end with a user turn."""
    users = [i for i, turn in enumerate(turns) if not turn.assistant]
    if not users or users[-1] != len(turns) - 1:
        raise ValueError("a conversation must end with a user turn")
    return list(turns[users[max(0, len(users) - max_turns)]:])


@dataclass(frozen=True)
class LabelledTurns:
    """Every labelled user turn of a set of conversations, packed for the filter: `scores` [n, turns,
    experts] with `valid`, `neutral` and `assistant` masks, and each turn's label (an expert name or
    OUT_OF_SCOPE)."""

    scores: torch.Tensor
    valid: torch.Tensor
    neutral: torch.Tensor
    assistant: torch.Tensor
    labels: list[str]


def scored_turns(turns: LabelledTurns, names: Sequence[str], params: ContextParams) -> list[ScoredQuery]:
    """Each turn's contextual best expert, score and runner-up score, with no fallback applied."""
    context = conversation_context(turns.scores, turns.valid, turns.neutral, params, assistant=turns.assistant)
    best = context.scores.gather(1, context.chosen[:, None])[:, 0]
    others = context.scores.scatter(1, context.chosen[:, None], float("-inf"))
    runner_up = others.max(dim=1).values if len(names) > 1 else None
    return [ScoredQuery(label, names[c], s, (float(runner_up[i]) if runner_up is not None else None))
            for i, (label, c, s) in enumerate(zip(turns.labels, context.chosen.tolist(), best.tolist(),
                                                  strict=True))]


TEMPERATURES = (0.03, 0.04, 0.05, 0.06, 0.08)
SWITCH_PROBABILITIES = (0.05, 0.1, 0.2, 0.3)
DECAYS = (0.3, 0.5, 0.8)  # only the fallback's score depends on it: a longer memory holds a whole topic


def fit_context(turns: LabelledTurns, names: Sequence[str], base: ContextParams = ContextParams(),
                max_accuracy_loss: float | None = None) -> tuple[ContextParams, FallbackRule, list[ScoredQuery]]:
    """Fit the context parameters together with the fallback rule on labelled conversation turns.

    For each (temperature, switch probability, decay) on a small grid the turns are scored in context and a
    fallback rule is fitted on them (`fit_fallback_rule`, with the same accuracy budget); the pair with the
    best in-scope accuracy plus out-of-scope recall under its rule wins. Returns the parameters, the rule
    and the scored turns under them.
    """
    best: tuple[float, ContextParams, FallbackRule, list[ScoredQuery]] | None = None
    for temperature, switch, decay in itertools.product(TEMPERATURES, SWITCH_PROBABILITIES, DECAYS):
        params = replace(base, temperature=temperature, switch_probability=switch, decay=decay)
        queries = scored_turns(turns, names, params)
        rule = fit_fallback_rule(queries, max_accuracy_loss=max_accuracy_loss)
        accuracy, recall = outcome(rule, queries)
        if best is None or accuracy + recall > best[0]:
            best = (accuracy + recall, params, rule, queries)
    assert best is not None
    return best[1], best[2], best[3]


def decide_conversation(
    router: Router, index: RoutingIndex, turns: Sequence[Turn], vectors: torch.Tensor,
    neutral_vectors: torch.Tensor | None, params: ContextParams, rule: FallbackRule, top_n: int | None = 2,
    session_previous: tuple[str, float] | None = None,
) -> Decision:
    """The decision for the last of `turns` (oldest first, cut by `window`; `vectors` [turns, dim] their
    embeddings), read in context.

    With one user turn, no assistant turn and no session this is exactly the policy's decision on that
    message. The fallback rule applies to the context score of the chosen expert. `session_previous` is a
    session's (expert, score) from its last decision: while the session stays with that expert, its score
    is at least the remembered one, so a client that sends only its latest message keeps the expert the
    session reached.
    """
    if not index.names:
        return router.decide_batch(vectors[-1:], index, top_n, rule)[0]
    scores = router.score(vectors, index).float()
    neutral = neutral_turns(vectors, neutral_vectors, params.neutral_similarity)
    assistant = torch.tensor([[turn.assistant for turn in turns]])
    session_expert, session_score = session_previous or (None, 0.0)
    remembered = index.names.index(session_expert) if session_expert in index.names else -1
    context = conversation_context(scores[None], torch.ones(1, len(turns), dtype=torch.bool), neutral[None],
                                   params, torch.tensor([remembered]) if remembered >= 0 else None, assistant)
    fused = context.scores
    if remembered >= 0 and int(context.chosen[0]) == remembered:
        fused = fused.clone()
        fused[0, remembered] = max(float(fused[0, remembered]), session_score)
    decision = router.decide_scores(fused, index, top_n, rule, chosen=context.chosen)[0]
    previous = int(context.previous[0])
    summary = ContextSummary(
        turns=int(context.turns[0]), previous_expert=index.names[previous] if previous >= 0 else None,
        outcome=context.outcome(0), reason=explain(context, 0, index.names, remembered >= 0),
        from_session=remembered >= 0)
    return replace(decision, context=summary)
