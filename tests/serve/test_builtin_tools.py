"""`herd serve --builtin-tools --index I` with the embedded model: requests without client tools go through the agent
loop server-side (the loop itself, with scripted model turns, is tests/tools/test_agent.py), and the built-ins
reach the prompt."""

import json

import httpx
import openai
import pytest

from herd.cli import main as herd_main

KEY = "test-key"


@pytest.fixture(scope="module")
def server(serve, tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs") / "kept.jsonl"
    docs.write_text(json.dumps({"text": "Paris is the capital of France.", "id": "p"}) + "\n")
    index = docs.with_name("index.sqlite")
    assert herd_main(["index", "build", str(docs), "--out", str(index)]) == 0
    url, _ = serve("--builtin-tools", "--index", str(index), "--max-batch", "2", "--max-seq-len", "1024")
    return url


def test_a_request_without_tools_runs_the_loop_and_reports_its_steps(server) -> None:
    body = {"messages": [{"role": "user", "content": "Search for the capital of France."}], "max_tokens": 48,
            "temperature": 0}  # fmt: skip
    r = httpx.post(f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"] and out["choices"][0]["finish_reason"] in ("stop", "length")
    steps = out["herd"]["tool_steps"]
    assert all(set(s) == {"name", "arguments", "result"} for s in steps)
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0
    # The built-ins are in the prompt the model saw: one turn uses more prompt tokens than the bare question.
    bare = httpx.post(
        f"{server}/tokenize", json={"messages": body["messages"]}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert out["usage"]["prompt_tokens"] > bare.json()["count"] + 50


def test_streaming_gives_the_answer_and_unsupported_options_are_refused(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, timeout=120, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    chunks = list(client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=12,
                                                 temperature=0, stream=True))  # fmt: skip
    plain = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, max_tokens=12, temperature=0
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, n=2)
