"""Streamed-text bookkeeping and sampling rules, without a model."""

from __future__ import annotations

import pytest
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


def test_penalties_bias_and_minimum_length_as_openai_and_vllm_define_them() -> None:
    from experts.backends.sampling import apply_penalties

    logits = torch.tensor([2.0, -1.0, 0.5, 1.0, 3.0])
    prompt = torch.tensor([[1]])
    params = SamplingParams(8, 0.0, 1.0, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0,
                            logit_bias=((2, 10.0),), min_tokens=4)
    out = apply_penalties(logits, params, prompt, generated=[0, 0, 3], eos_ids={4})
    # token 0: seen twice (repetition 2.0 divides the positive logit, then 2 x 0.25 + 0.5)
    assert out[0].item() == pytest.approx(2.0 / 2 - 2 * 0.25 - 0.5)
    assert out[1].item() == pytest.approx(-1.0 * 2)  # in the prompt: a negative logit is multiplied
    assert out[2].item() == pytest.approx(0.5 + 10.0)  # unseen, biased
    assert out[3].item() == pytest.approx(1.0 / 2 - 0.25 - 0.5)
    assert out[4].item() == float("-inf")  # end-of-sequence before min_tokens
    assert apply_penalties(logits, params, prompt, [0, 0, 3, 2], {4})[4].item() == pytest.approx(3.0)
    assert torch.equal(logits, torch.tensor([2.0, -1.0, 0.5, 1.0, 3.0]))  # the caller's logits are untouched


def test_no_penalty_means_no_processing() -> None:
    assert not SamplingParams(8, 0.7, 0.9).penalised
    assert SamplingParams(8, 0.7, 0.9, logit_bias=((1, -100.0),)).penalised
