"""The agent loop of the built-in tools: the offline FTS5 index, the Brave client against a local stand-in of its
API, the sandboxed code interpreter, and the loop feeding results back. The model's turns are scripted here (a
135M model rarely calls tools on its own); the server test drives the real model."""

import http.server
import json
import threading

import pytest

from herd.cli import main as herd_main
from herd.errors import ToolError
from herd.tokenizer import Llama3Tokenizer
from herd.tools.agent import BuiltinTools, run_agent
from herd.tools.index import FtsIndex, build_index

DOCS = [
    {"text": "Paris is the capital and largest city of France.", "id": "a", "metadata": {"url": "https://ex.org/p"}},
    {"text": "The Nile is the longest river in Africa.", "id": "b", "metadata": {}},
    {"text": "Mount Everest is the highest mountain above sea level.", "id": "c", "metadata": {"title": "Everest"}},
]


@pytest.fixture
def index(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "00000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    out = tmp_path / "index.sqlite"
    assert herd_main(["index", "build", str(kept), "--out", str(out)]) == 0
    return out


def test_the_index_ranks_by_bm25_and_reads_query_operators_as_words(index) -> None:
    fts = FtsIndex(index)
    assert fts.size == 3
    hits = fts.search("capital of France")
    assert hits[0] == {"title": "https://ex.org/p", "snippet": DOCS[0]["text"], "url": "https://ex.org/p"}
    assert fts.search('everest" OR NEAR(') and fts.search("Everest")[0]["title"] == "Everest"
    assert fts.search("zebra") == [] and fts.search("!!!") == []


def test_bad_index_input_fails_clearly_and_leaves_no_file(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(ToolError, match=r"bad.jsonl:2: no string field 'text'"):
        build_index([bad], tmp_path / "i.sqlite")
    assert not list(tmp_path.glob("*.sqlite*")) and not list(tmp_path.glob(".i.sqlite*"))
    with pytest.raises(ToolError, match="does not exist; build one with `herd index build`"):
        FtsIndex(tmp_path / "missing.sqlite")


def test_the_loop_runs_llama3_code_and_search_calls_and_feeds_results_back(index) -> None:
    tools = BuiltinTools(index=index, brave_key="", wolfram_key="")
    turns = iter(["<|python_tag|>print(17 * 23)", 'brave_search.call(query="capital of France")', "It is Paris."])
    seen = []

    def complete(messages):
        seen.append(messages)
        return next(turns)

    answer, steps = run_agent(complete, [{"role": "user", "content": "?"}], tools, "llama3")
    assert answer == "It is Paris."
    assert (steps[0].name, steps[0].result) == ("code_interpreter", "391\n")
    assert json.loads(steps[1].result)[0]["url"] == "https://ex.org/p"
    system = seen[0][0]["content"]
    assert "Environment: ipython" in system and "Tools: brave_search" in system
    # The results reach the model as ipython turns of a valid Llama 3 dialog.
    last = seen[-1]
    assert [m["role"] for m in last[-4:]] == ["assistant", "tool", "assistant", "tool"]
    assert Llama3Tokenizer().encode_chat(last)


def test_json_format_calls_failures_become_results_and_steps_are_bounded() -> None:
    tools = BuiltinTools(brave_key="", wolfram_key="")  # no search backend, no Wolfram key
    calls = [
        '{"name": "search", "arguments": {"query": "x"}}',
        '{"name": "wolfram_alpha", "arguments": {"query": "2+2"}}',
        '{"name": "code_interpreter", "arguments": {"code": "raise SystemExit(3)"}}',
    ]
    turns = iter([*calls, "done"])
    answer, steps = run_agent(lambda m: next(turns), [{"role": "user", "content": "?"}], tools, "json", max_steps=3)
    assert answer == "done"
    assert steps[0].result.startswith("error: search needs BRAVE_API_KEY or an index")
    assert steps[1].result == "error: wolfram_alpha needs WOLFRAM_API_KEY"
    assert steps[2].result.startswith("error: code failed")


class _BraveStandIn(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.headers.get("X-Subscription-Token") == "k"
        body = {"web": {"results": [{"title": "T", "url": "https://u", "description": "D " + self.path}]}}
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


def test_brave_search_sends_the_key_and_reads_its_results(monkeypatch) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _BraveStandIn)
    threading.Thread(target=server.handle_request, daemon=True).start()
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("HERD_BRAVE_URL", f"http://127.0.0.1:{server.server_port}/search")
    try:
        result = json.loads(BuiltinTools(brave_key="k").execute("brave_search", {"query": "a b"}, "llama3"))
        assert result == [{"title": "T", "snippet": "D /search?q=a+b&count=3", "url": "https://u"}]
        failed = BuiltinTools(brave_key="wrong").execute("brave_search", {"query": "a"}, "llama3")
        assert failed == "error: Brave Search answered HTTP 401 Unauthorized"
    finally:
        server.server_close()
