"""Streamed-text bookkeeping and sampling rules, without a model."""

from __future__ import annotations

import torch

from experts.backends import SamplingParams
from experts.backends.sampling import StreamedText, sample_next_token


def feed(stream: StreamedText, pieces: list[str]) -> str:
    text, sent = "", ""
    for piece in pieces:
        text += piece
        sent += stream.update(text)
        if stream.stopped:
            return sent
    return sent + stream.flush(text)


def test_without_stop_strings_everything_is_sent() -> None:
    assert feed(StreamedText(()), ["Hel", "lo", " world"]) == "Hello world"


def test_stop_string_split_across_tokens_is_never_sent() -> None:
    stream = StreamedText(("END",))
    assert feed(stream, ["abc E", "N", "D more"]) == "abc "
    assert stream.stopped


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    assert feed(StreamedText(("END",)), ["abc E", "N", "x"]) == "abc ENx"


def test_incomplete_utf8_is_held_back() -> None:
    stream = StreamedText(())
    assert stream.update("caf\ufffd") == ""
    assert stream.update("café") == "café"


def test_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert sample_next_token(logits, SamplingParams(1, 0.0, 1.0), None) == 1
    params = SamplingParams(1, 1.0, 0.5)  # top_p keeps only the dominant token
    assert all(sample_next_token(logits, params, torch.Generator().manual_seed(s)) == 1 for s in range(20))
    a = [sample_next_token(torch.zeros(50), SamplingParams(1, 1.0, 1.0), torch.Generator().manual_seed(7))
         for _ in range(3)]
    assert len(set(a)) == 1
