"""Speculative decoding: greedy output equal to plain decoding token for token, sampled output distributed as
the target's own, and the same stop / length behaviour."""

import copy
import dataclasses
import itertools

import pytest
import torch
from scipy.stats import chisquare

from herd.errors import InferenceError
from herd.inference import Engine, SamplingParams, SpeculativeConfig
from herd.inference.sampling import token_probs
from herd.inference.speculative import Draft, PromptLookupDrafter, verify
from herd.model import ModelArgs, Transformer, build_model
from herd.tokenizer import Llama3Tokenizer


def _tiny(seed: int, scale: float, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = build_model(ModelArgs(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, **kw}))
    with torch.no_grad():  # sharper distributions than the init gives
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer() -> Llama3Tokenizer:
    return Llama3Tokenizer()


# A 64-token vocabulary: a random model's output then repeats itself often enough for prompt lookup to be
# right now and then. Token ids below 64 decode to ASCII, which the stop-string cases need.
VOCAB = 64


@pytest.fixture(scope="module")
def target():
    return _tiny(0, 3, vocab_size=VOCAB, max_seq_len=128)


@pytest.fixture(scope="module")
def plain(target, tokenizer) -> Engine:
    return Engine(target, tokenizer, max_batch_size=3)


@pytest.fixture(scope="module")
def lookup(target, tokenizer) -> Engine:
    return Engine(target, tokenizer, speculative=SpeculativeConfig(method="prompt_lookup", num_draft_tokens=4))


@pytest.fixture(scope="module")
def drafted(target, tokenizer) -> Engine:
    draft = _tiny(1, 3, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=VOCAB, max_seq_len=128)
    spec = SpeculativeConfig(method="draft", num_draft_tokens=3, draft_model=draft)
    return Engine(target, tokenizer, speculative=spec)


@pytest.fixture(scope="module")
def self_drafted(target, tokenizer) -> Engine:
    spec = SpeculativeConfig(method="draft", num_draft_tokens=4, draft_model=copy.deepcopy(target))
    return Engine(target, tokenizer, speculative=spec)


PROMPTS = [
    [1, 21, 14],
    [1, 10, 23, 31, 4, 26, 13, 22, 24],
    [19],
    [1, *[10, 23, 31, 4] * 4],  # repetitive: lookup drafts from the prompt
    [1, 21, 14, 31, 28, 17, 3, 13, 21, 14, 31],
]


def _greedy_equal(engine: Engine, plain: Engine, params: SamplingParams) -> tuple[int, int]:
    """Assert speculative == plain for every prompt; return the (drafted, accepted) totals."""
    drafted = accepted = 0
    for prompt in PROMPTS:
        got = engine.generate([prompt], params)[0]
        assert got == plain.generate([prompt], params)[0], prompt
        drafted, accepted = drafted + engine.last_stats.drafted, accepted + engine.last_stats.accepted
    return drafted, accepted


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_prompt_lookup_equals_plain_greedy(lookup, plain, penalty) -> None:
    params = SamplingParams(max_new_tokens=24, repetition_penalty=penalty, stop_token_ids=[])
    drafted, accepted = _greedy_equal(lookup, plain, params)
    assert 0 < accepted < drafted  # drafts were kept and drafts were rejected: neither path is untested


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_draft_model_equals_plain_greedy(drafted, plain, penalty) -> None:
    params = SamplingParams(max_new_tokens=16, repetition_penalty=penalty, stop_token_ids=[])
    n_drafted, _ = _greedy_equal(drafted, plain, params)
    assert n_drafted > 0


def test_target_as_its_own_draft_accepts_every_draft(self_drafted, plain) -> None:
    n_drafted, accepted = _greedy_equal(self_drafted, plain, SamplingParams(max_new_tokens=16, stop_token_ids=[]))
    assert accepted == n_drafted > 0
    # 1 token from the prefill, then 5 per forward (4 drafts + the bonus token): 16 tokens in 3 forwards.
    assert self_drafted.last_stats.forwards == 3


def test_stop_token_stop_string_and_length_limits_match_plain(lookup, drafted, self_drafted, plain) -> None:
    # With the target as its own draft, the stop lands inside a run of accepted drafts.
    prompt = PROMPTS[3]
    free = plain.generate([prompt], SamplingParams(max_new_tokens=20, stop_token_ids=[]))[0]
    stop_token = free.tokens[7]
    stop_string = free.text[len(free.text) // 2 :][:3]
    assert stop_string
    cases = [
        SamplingParams(max_new_tokens=20, stop_token_ids=[stop_token]),
        SamplingParams(max_new_tokens=20, stop_token_ids=[], stop=[stop_string]),
        *(SamplingParams(max_new_tokens=n, stop_token_ids=[]) for n in (1, 2, 3, 5, 6, 9)),
        SamplingParams(max_new_tokens=6, stop_token_ids=[], logprobs=True),
    ]
    for engine, params in itertools.product((lookup, drafted, self_drafted), cases):
        events = list(engine.stream([prompt], params))
        want = plain.generate([prompt], params)[0]
        got = events[-1].finished
        assert got is not None and [e.index for e in events] == [0] * len(events)
        assert (got.tokens, got.text, got.finish_reason, got.stop_reason) == (
            want.tokens,
            want.text,
            want.finish_reason,
            want.stop_reason,
        )
        assert "".join(e.text for e in events) == got.text
        if params.logprobs:
            assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4)
    assert [plain.generate([prompt], p)[0].finish_reason for p in cases[:2]] == ["stop", "stop"]


def test_context_limit_with_speculation(lookup, drafted, self_drafted, plain) -> None:
    # The prompts leave 11..7 of 128 positions: k shrinks near the end and the cache is never overrun. With the
    # target as its own draft every draft is kept, so a step that overshot the context would show.
    params = SamplingParams(max_new_tokens=50, stop_token_ids=[])
    for extra in range(5):
        prompt = PROMPTS[1] * 13 + PROMPTS[1][:extra]
        want = plain.generate([prompt], params)[0]
        assert len(want.tokens) == 128 - len(prompt) and want.finish_reason == "length"
        for engine in (lookup, drafted, self_drafted):
            assert engine.generate([prompt], params)[0] == want
    assert self_drafted.last_stats.accepted == self_drafted.last_stats.drafted > 0


def test_batches_of_several_prompts_decode_plainly(lookup, plain) -> None:
    params = SamplingParams(max_new_tokens=10, stop_token_ids=[])
    assert lookup.generate(PROMPTS[:3], params) == plain.generate(PROMPTS[:3], params)
    assert lookup.last_stats.drafted == 0


def test_seeded_speculative_sampling_is_reproducible(drafted) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, stop_token_ids=[])
    assert drafted.generate([PROMPTS[1]], params) == drafted.generate([PROMPTS[1]], params)


# ---------------------------------------------------------------------------------------------
# Speculative sampling keeps the target's distribution. A tiny model over 16 tokens makes the exact
# distribution of the first few generated tokens cheap to enumerate; samples from the engine must fit it.

V, STEPS, SAMPLES = 16, 4, 600
SAMPLING = SamplingParams(max_new_tokens=STEPS, temperature=1.0, top_k=12, repetition_penalty=1.5, stop_token_ids=[])


@torch.no_grad()
def _exact_joint(model, prompt: list[int], params: SamplingParams, steps: int) -> torch.Tensor:
    """P(t_1..t_steps) as a (V,) * steps tensor, by running the model (no cache) on every prefix."""
    prefixes, joint = torch.tensor([prompt]), torch.ones(1)
    for _ in range(steps):
        seen_NV = torch.nn.functional.one_hot(prefixes, V).any(dim=1)
        p_NV = token_probs(model(prefixes)[:, -1], params, seen_NV)
        joint = (joint[:, None] * p_NV).reshape(-1)
        prefixes = torch.cat([prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(len(p_NV))[:, None]], 1)
    return joint.reshape((V,) * steps)


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit. Cells are merged, smallest first, into bins expecting at least 5 each."""
    expected = probs.double() / probs.double().sum() * counts.sum()  # float32 probabilities sum to 1 only roughly
    if (counts[expected == 0] > 0).any():
        return 0.0  # an outcome the distribution rules out was observed
    obs: list[float] = []
    exp: list[float] = []
    bin_obs = bin_exp = 0.0
    for i in expected.argsort().tolist():
        bin_obs, bin_exp = bin_obs + float(counts[i]), bin_exp + float(expected[i])
        if bin_exp >= 5:
            obs.append(bin_obs)
            exp.append(bin_exp)
            bin_obs = bin_exp = 0.0
    if obs:  # the remainder joins the last bin
        obs[-1], exp[-1] = obs[-1] + bin_obs, exp[-1] + bin_exp
    if len(obs) < 2:
        return 0.0 if len(obs) == 1 and obs[0] != exp[0] else 1.0
    return float(chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def small_target():
    return _tiny(0, 3, dim=32, n_layers=1, vocab_size=V, max_seq_len=32)


@pytest.fixture(scope="module")
def small_prompt(small_target) -> list[int]:
    # Text the model itself would write, so lookup drafts are sometimes right, sometimes not.
    prompt = [0]
    with torch.no_grad():
        for _ in range(21):
            prompt.append(int(small_target(torch.tensor([prompt]))[0, -1].argmax()))
    return prompt


@pytest.mark.parametrize("method", ["prompt_lookup", "draft"])
def test_speculative_sampling_keeps_the_target_distribution(method, small_target, small_prompt, tokenizer) -> None:
    draft = _tiny(1, 3, dim=32, n_layers=1, vocab_size=V, max_seq_len=32) if method == "draft" else None
    spec = SpeculativeConfig(method=method, num_draft_tokens=2, draft_model=draft)
    engine = Engine(small_target, tokenizer, speculative=spec)
    counts = torch.zeros(STEPS, V)
    drafted = accepted = 0
    for seed in range(SAMPLES):
        tokens = engine.generate([small_prompt], dataclasses.replace(SAMPLING, seed=seed))[0].tokens
        counts[torch.arange(STEPS), torch.tensor(tokens)] += 1
        drafted, accepted = drafted + engine.last_stats.drafted, accepted + engine.last_stats.accepted
    assert 0.05 * drafted < accepted < 0.95 * drafted  # both the accept and the reject branch ran often

    joint = _exact_joint(small_target, small_prompt, SAMPLING, STEPS)
    for step in range(STEPS):
        marginal = joint.sum(dim=[d for d in range(STEPS) if d != step])
        assert _chi2_pvalue(counts[step], marginal) > 1e-3, f"token {step + 1}"

    # Not vacuous: a rule that kept every draft would give token 2 the draft distribution, which these samples
    # and this test tell apart from the target's by a wide margin.
    p1 = joint.sum(dim=[1, 2, 3])
    q2_given_t1 = torch.stack([_first_draft_dist(engine, draft, [*small_prompt, t1]) for t1 in range(V)])
    always_accept = p1 @ q2_given_t1
    marginal2 = joint.sum(dim=[0, 2, 3])
    assert 0.5 * (always_accept - marginal2).abs().sum() > 0.15
    assert _chi2_pvalue(counts[1], always_accept) < 1e-6


@torch.no_grad()
def _first_draft_dist(engine: Engine, draft, context: list[int]) -> torch.Tensor:
    """The distribution of the first draft after `context` (for lookup: a point mass, or p when nothing is drafted)."""
    seen_V = torch.nn.functional.one_hot(torch.tensor(context), V).any(dim=0)
    if draft is not None:
        return token_probs(draft(torch.tensor([context]))[0, -1], SAMPLING, seen_V)
    drafter = PromptLookupDrafter(3)
    drafter.start(32)
    tokens = drafter.propose(context, 1, SAMPLING, None).tokens
    if not tokens:
        return token_probs(engine.model(torch.tensor([context]))[0, -1], SAMPLING, seen_V)
    return torch.nn.functional.one_hot(torch.tensor(tokens[0]), V).float()


@pytest.mark.parametrize("point_mass", [False, True])
def test_the_rule_alone_emits_p_whatever_q(point_mass) -> None:
    """One verified position, many draws: finer than the engine-level test above, and cheap."""
    gen = torch.Generator().manual_seed(0)
    logits_JV = torch.randn(2, 8, generator=gen) * 1.5  # row 0 judges the draft; row 1 gives the bonus token
    q_V = (torch.randn(8, generator=gen) * 1.5).softmax(-1)
    if point_mass:  # prompt lookup: always the same draft, q = 1 on it
        q_V = torch.nn.functional.one_hot(q_V.argmax(), 8).float()
    params = SamplingParams(temperature=1.0, repetition_penalty=2.0)
    seen_V = torch.arange(8) < 2  # tokens 0 and 1 are in the prompt
    counts, bonus_counts = torch.zeros(8), torch.zeros(8)
    for _ in range(8000):
        token = int(torch.multinomial(q_V, 1, generator=gen))
        draft = Draft([token]) if point_mass else Draft([token], q_V[None])
        tokens = verify(logits_JV, draft, params, gen, seen_V)
        counts[tokens[0]] += 1
        if len(tokens) == 2:
            bonus_counts[tokens[1]] += 1

    p_V = token_probs(logits_JV[0], params, seen_V)
    assert _chi2_pvalue(counts, p_V) > 1e-3
    # Keeping every draft would emit q: far from p, and these samples tell the two apart.
    assert 0.5 * (q_V - p_V).abs().sum() > 0.2
    assert _chi2_pvalue(counts, q_V) < 1e-6

    # The bonus token follows row 1 with the accepted draft counted as seen; draft d is accepted with
    # probability min(p(d), q(d)).
    accepted_V = torch.minimum(p_V, q_V)
    after_V = torch.stack([token_probs(logits_JV[1], params, seen_V | (torch.arange(8) == d)) for d in range(8)])
    bonus_p_V = accepted_V @ after_V / accepted_V.sum()
    assert bonus_counts.sum() > 1000
    assert _chi2_pvalue(bonus_counts, bonus_p_V) > 1e-3
    assert _chi2_pvalue(bonus_counts, p_V) < 1e-6  # the two rows differ enough for a mixed-up row to show


# ---------------------------------------------------------------------------------------------


def test_bad_speculative_settings_raise_clear_errors(target, tokenizer) -> None:
    with pytest.raises(InferenceError, match="method must be"):
        SpeculativeConfig(method="medusa")  # type: ignore[arg-type]
    with pytest.raises(InferenceError, match="num_draft_tokens must be >= 1, got 0"):
        SpeculativeConfig(method="prompt_lookup", num_draft_tokens=0)
    with pytest.raises(InferenceError, match="max_ngram must be >= 1, got 0"):
        SpeculativeConfig(method="prompt_lookup", max_ngram=0)
    with pytest.raises(InferenceError, match="needs a draft_model"):
        SpeculativeConfig(method="draft")
    with pytest.raises(InferenceError, match="only used with method 'draft'"):
        SpeculativeConfig(method="prompt_lookup", draft_model=target)
    with pytest.raises(InferenceError, match="target model itself"):
        Engine(target, tokenizer, speculative=SpeculativeConfig(method="draft", draft_model=target))
    small = _tiny(2, 1, dim=32, n_layers=1, vocab_size=V, max_seq_len=32)
    with pytest.raises(InferenceError, match="vocab_size 16, the target 64"):
        Engine(target, tokenizer, speculative=SpeculativeConfig(method="draft", draft_model=small))
    short = _tiny(2, 1, dim=32, n_layers=1, vocab_size=VOCAB, max_seq_len=16)
    engine = Engine(target, tokenizer, speculative=SpeculativeConfig(method="draft", draft_model=short))
    with pytest.raises(InferenceError, match="draft model's context"):
        engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=20))
