"""The embedded SmolLM2-135M-Instruct GGUF: herd's greedy chat continuations are token-identical to
transformers' greedy generation on the same GGUF file (both dequantize to float32), with herd's training model and
with its decode model."""

import pytest
import torch

from herd.formats import load_pretrained, resolve_model_path
from herd.inference import Engine, SamplingParams
from herd.inference.decode_model import DecodeModel

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "How do I reverse a list in Python?",
]


@pytest.fixture(scope="module")
def herd_model():
    return load_pretrained()


@pytest.mark.slow
def test_greedy_chat_matches_transformers_on_the_same_gguf(herd_model) -> None:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(None)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = herd_model.tokenizer
    prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=64)
    ours = Engine(herd_model.model, tok, max_batch_size=5).generate(prompts, params)
    # The decode model (fused weights, herd's kernels, one request at a time as a chat would run) in float32 too.
    fast = Engine(DecodeModel.from_transformer(herd_model.model), tok)
    ours_fast = [fast.generate([p], params)[0] for p in prompts]
    for prompt, c, c_fast in zip(prompts, ours, ours_fast, strict=True):
        assert c_fast.tokens == c.tokens
        with torch.no_grad():
            out = ref.generate(
                torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=sorted(tok.stop_ids)
            )
        theirs = out[0, len(prompt) :].tolist()
        mine = c.tokens + ([c.stop_reason] if c.finish_reason == "stop" else [])
        assert mine == theirs, tok.decode(mine) + " | " + tok.decode(theirs)


def test_embedded_model_answers_a_question(herd_model) -> None:
    tok = herd_model.tokenizer
    prompt = tok.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    c = Engine(herd_model.model, tok).generate([prompt], SamplingParams(max_new_tokens=16))[0]
    assert "Paris" in c.text
    assert c.finish_reason == "stop" and c.stop_reason in tok.stop_ids
