"""The batched KV-cache engine against a plain no-cache greedy loop, and its sampling contracts."""

import pytest
import torch

from herd.errors import InferenceError
from herd.inference import Engine, SamplingParams
from herd.model import ModelArgs, build_model
from herd.tokenizer import Llama3Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Llama3Tokenizer:
    return Llama3Tokenizer()


@pytest.fixture(scope="module")
def engine(tokenizer) -> Engine:
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size, max_seq_len=128)
    model = build_model(args)
    with torch.no_grad():  # sharper distributions than the init gives, so greedy paths are well separated
        for p in model.parameters():
            p.mul_(6)
    return Engine(model, tokenizer, max_batch_size=3)


def _naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]


PROMPTS = [[128000, 791, 6864], [128000, 40, 1093, 311, 1304, 264, 14393, 922, 1124], [9906]]


def test_batched_greedy_with_mixed_lengths_equals_naive_loop(engine) -> None:
    params = SamplingParams(max_new_tokens=12, stop_token_ids=[])
    # 4 prompts with max_batch_size 3: two batches, the first one left-padded.
    prompts = [*PROMPTS, PROMPTS[1][:4]]
    results = engine.generate(prompts, params)
    for prompt, c in zip(prompts, results, strict=True):
        assert c.tokens == _naive_greedy(engine.model, prompt, 12)
        assert c.finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_batch_independent(engine) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.5, seed=7, stop_token_ids=[])
    alone = engine.generate([PROMPTS[0]], params)[0].tokens
    batched = engine.generate([PROMPTS[1], PROMPTS[0]], params)[1].tokens
    assert alone == batched == engine.generate([PROMPTS[0]], params)[0].tokens
    other = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=16, temperature=1.5, seed=8))[0].tokens
    assert other != alone


def test_top_k_1_and_tiny_top_p_equal_greedy(engine) -> None:
    greedy = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=8, stop_token_ids=[]))[0].tokens
    for extra in ({"top_k": 1}, {"top_p": 1e-6}):
        p = SamplingParams(max_new_tokens=8, temperature=1.0, seed=1, stop_token_ids=[], **extra)
        assert engine.generate([PROMPTS[1]], p)[0].tokens == greedy


def test_stop_token_ends_generation_and_is_not_returned(engine) -> None:
    free = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, stop_token_ids=[]))[0].tokens
    c = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, stop_token_ids=[free[3]]))[0]
    first = free.index(free[3])
    assert c.tokens == free[:first]
    assert (c.finish_reason, c.stop_reason) == ("stop", free[3])


def test_stop_string_cuts_text_and_stream_never_shows_it(engine, tokenizer) -> None:
    free = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=10, stop_token_ids=[]))[0]
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop
    params = SamplingParams(max_new_tokens=10, stop_token_ids=[], stop=[stop])
    events = list(engine.stream([PROMPTS[1]], params))
    final = events[-1].finished
    assert final.text == free.text[: free.text.find(stop)]
    assert (final.finish_reason, final.stop_reason) == ("stop", stop)
    assert "".join(e.text for e in events) == final.text


def test_streamed_text_concatenates_to_completion_text(engine) -> None:
    events = list(engine.stream(PROMPTS, SamplingParams(max_new_tokens=9, stop_token_ids=[])))
    finals = {e.index: e.finished for e in events if e.finished}
    for i in range(len(PROMPTS)):
        assert "".join(e.text for e in events if e.index == i) == finals[i].text
        assert len(finals[i].tokens) == 9


def test_logprobs_are_the_models_log_softmax(engine) -> None:
    c = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=5, logprobs=True, stop_token_ids=[]))[0]
    with torch.no_grad():
        logits = engine.model(torch.tensor([PROMPTS[1] + c.tokens]))[0]
    expected = logits.log_softmax(-1)[len(PROMPTS[1]) - 1 : -1].gather(-1, torch.tensor(c.tokens)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_strong_repetition_penalty_avoids_seen_tokens(engine) -> None:
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1e6, stop_token_ids=[])
    c = engine.generate([PROMPTS[1]], params)[0]
    assert len(set(c.tokens)) == len(c.tokens)
    assert not set(c.tokens) & set(PROMPTS[1])


def test_context_limit_finishes_with_length(engine) -> None:
    prompt = PROMPTS[1] * 13  # 117 of 128 positions
    c = engine.generate([prompt], SamplingParams(max_new_tokens=50, stop_token_ids=[]))[0]
    assert len(c.tokens) == 128 - len(prompt) and c.finish_reason == "length"


def test_bad_requests_raise_clear_errors(engine) -> None:
    with pytest.raises(InferenceError, match="prompt 1 is empty"):
        engine.generate([[1], []], SamplingParams())
    with pytest.raises(InferenceError, match="token id 999999"):
        engine.generate([[999999]], SamplingParams())
    with pytest.raises(InferenceError, match="no room"):
        engine.generate([[1] * 128], SamplingParams())
    with pytest.raises(InferenceError, match="top_p"):
        SamplingParams(top_p=0)


def test_chunked_prefill_gives_the_same_tokens_and_logprobs(engine, tokenizer) -> None:
    params = SamplingParams(max_new_tokens=6, stop_token_ids=[], logprobs=True)
    prompts = [PROMPTS[1], PROMPTS[0]]  # left padding crosses chunk boundaries
    whole = engine.generate(prompts, params)
    chunked = Engine(engine.model, tokenizer, prefill_chunk=2).generate(prompts, params)
    for a, b in zip(whole, chunked, strict=True):
        assert a.tokens == b.tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    with pytest.raises(InferenceError, match="prefill_chunk must be >= 1, got 0"):
        Engine(engine.model, tokenizer, prefill_chunk=0)
