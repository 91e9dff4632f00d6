"""Third-party clients against one real `herd serve` (embedded SmolLM2 on 127.0.0.1) for the whole module:
langchain-openai, lm-eval's `local-chat-completions` model and a schemathesis fuzz of /openapi.json. Every request
asks for few tokens and every loop and wait is bounded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import lm_eval
import openai
import pytest
from langchain_openai import ChatOpenAI
from lm_eval.models.api_models import LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER as NONE_ANSWER
from pydantic import BaseModel, Field

KEY = "test-key"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(serve):
    url, _ = serve("--max-batch", "4", "--max-queue", "8", "--max-seq-len", "256", "--request-timeout", "60")
    return url


class GetWeather(BaseModel):
    """Current weather of a city."""

    city: str = Field(description="The city's name")
    days: int = Field(description="Days of forecast")


def test_langchain_chat_model_answers_like_the_openai_client_and_forced_tool_args_fit_the_schema(server) -> None:
    prompt = "Name three colors of the rainbow."
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=48
    )
    # 48 tokens: enough for the forced call's whole JSON (a cut-off call comes back as text, finish_reason length).
    llm = ChatOpenAI(base_url=f"{server}/v1", api_key=KEY, model=MODEL, temperature=0, max_tokens=48,
                     timeout=120, max_retries=0)  # fmt: skip
    assert llm.invoke(prompt).content == reply.choices[0].message.content

    message = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("What's the weather in Paris this week?")
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"], strict=True)  # required keys present, str and int as declared


def test_lm_eval_runs_a_local_generate_until_task_through_the_chat_api(server, tmp_path, monkeypatch) -> None:
    questions = [("What is 2+3?", "5"), ("What is 4+4?", "8"), ("What is 10-7?", "3"), ("What is 3*3?", "9"),
                 ("What is 6/2?", "3")]  # fmt: skip
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in questions))
    # The data is a local file and exact_match is lm-eval's own code, so nothing is fetched; datasets caches the
    # converted file under tmp_path rather than in ~/.cache.
    task = {
        "task": "herd_arith",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf-cache")},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}} Answer with a number.",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False, "temperature": 0},
        "metric_list": [{"metric": "exact_match", "ignore_case": True, "ignore_punctuation": True}],
    }
    (tmp_path / "herd_arith.yaml").write_text(json.dumps(task))  # JSON is YAML
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # local-chat-completions sends it as the bearer token
    # No tokenizer_backend: through the chat API the server applies the chat template, so lm-eval needs (and
    # downloads) no tokenizer. One attempt per request, so that a server error fails the test instead of retrying.
    model_args = {"model": MODEL, "base_url": f"{server}/v1/chat/completions", "tokenized_requests": False,
                  "max_retries": 1, "timeout": 120}  # fmt: skip
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=model_args,
        tasks=["herd_arith"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path), include_defaults=False),
        apply_chat_template=True,
    )
    assert results is not None
    score = results["results"]["herd_arith"]["exact_match,none"]
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert results["n-samples"]["herd_arith"]["effective"] == len(questions)
    # Every answer is the server's text: lm-eval puts a placeholder where a response has no content.
    assert all(s["resps"][0][0] != NONE_ANSWER for s in results["samples"]["herd_arith"])


def test_schemathesis_run_over_the_openapi_schema_finds_no_server_error(server, tmp_path) -> None:
    # The CLI, as users run it: its examples, coverage (boundary values, wrong types) and fuzzing phases, 15 cases
    # per operation and phase, each response checked for a 5xx. The hooks cap max_tokens to keep the run short.
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json", "--checks", "not_a_server_error",
           "--header", f"Authorization: Bearer {KEY}", "--max-examples", "15", "--phases", "examples,coverage,fuzzing",
           "--workers", "1", "--request-timeout", "120", "--generation-deterministic",
           "--suppress-health-check", "all", "--no-color"]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
