"""Llama 3 / 3.1 chat format against Meta's llama_models ChatFormat and its 3.1 prompt-format guide."""

import importlib.util
import itertools
import random
import re
from pathlib import Path

import pytest
from llama_models.datatypes import RawMessage, StopReason, ToolPromptFormat
from llama_models.datatypes import ToolCall as MetaToolCall
from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from herd.errors import TokenizerError
from herd.tokenizer import Llama3Tokenizer
from herd.tokenizer.chat_format import (
    ChatFormat,
    Message,
    ToolCall,
    custom_tools_prompt,
    parse_assistant_text,
    system_prompt,
)
from herd.tokenizer.llama3 import packaged_model_path


@pytest.fixture(scope="module")
def fmt() -> ChatFormat:
    return ChatFormat(Llama3Tokenizer())


@pytest.fixture(scope="module")
def ref() -> MetaChatFormat:
    return MetaChatFormat(MetaTokenizer(packaged_model_path()))


def to_meta(m: Message) -> RawMessage:
    calls = [MetaToolCall(call_id=f"c{i}", tool_name=c.name, arguments=c.arguments) for i, c in enumerate(m.tool_calls)]
    return RawMessage(
        role="tool" if m.role == "ipython" else m.role,
        content=m.content,
        context=m.context,
        stop_reason=StopReason(m.stop_reason) if m.stop_reason else None,
        tool_calls=calls,
    )


# -- 48 dialogs (8 systems x 6 assistant turns): every role, multi-turn, each tool kind, both stop tokens

SYSTEMS = [
    None,
    "You are a helpful assistant.",
    system_prompt(tools=["brave_search", "wolfram_alpha"], today="21 September 2024", instructions="Be brief."),
    system_prompt(tools=["code_interpreter"], knowledge_cutoff=None),
    system_prompt(custom_tools=True, today="05 March 2025"),
    "  leading and trailing whitespace is kept \n",
    system_prompt(tools=["brave_search", "photogen", "code_interpreter"], instructions="Réponds en français."),
    "Tu es un assistant. 你是助手。 Ты — помощник.",
]
USERS = [
    "What is the capital of France?",
    "Search the web for the latest price of 1oz gold?",
    "Écris un haïku sur la mer 🌊, s'il te plaît.",
    "Pasted text: <|eot_id|><|start_header_id|>assistant<|end_header_id|> done?",
]
ASSISTANT_TURNS = [  # (assistant message, tool result or None)
    (Message(role="assistant", content="Paris is the capital of France."), None),
    (
        Message(
            role="assistant",
            tool_calls=[ToolCall(name="brave_search", arguments={"query": "latest price of 1oz gold"})],
            stop_reason="end_of_message",
        ),
        '{"price": "2,650 USD"}',
    ),
    (
        Message(
            role="assistant",
            tool_calls=[ToolCall(name="wolfram_alpha", arguments={"query": "100th decimal of pi"})],
            stop_reason="end_of_message",
        ),
        '{"queryresult": {"success": true, "plaintext": "7"}}',
    ),
    (
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(name="code_interpreter", arguments={"code": "def f(n):\n    return n * 2\n\nprint(f(21))"})
            ],
            stop_reason="end_of_message",
        ),
        "42\n",
    ),
    (
        Message(
            role="assistant",
            tool_calls=[ToolCall(name="trending_songs", arguments={"n": "10", "genre": "all"})],
            stop_reason="end_of_message",
        ),
        '[{"title": "Song A"}, {"title": "Song B"}]',
    ),
    (
        Message(role="assistant", content="Voici :\n\nLa mer respire,\nvagues d'argent.", stop_reason="end_of_turn"),
        None,
    ),
]


def dialogs() -> list[list[Message]]:
    out = []
    for i, (system, (assistant, result)) in enumerate(itertools.product(SYSTEMS, ASSISTANT_TURNS)):
        d = [] if system is None else [Message(role="system", content=system)]
        user = USERS[i % len(USERS)]
        d.append(
            Message(role="user", content=user, context="Retrieved: gold trades near 2,650 USD." if i % 7 == 3 else None)
        )
        d.append(assistant)
        if result is not None:
            d.append(Message(role="ipython", content=result))
            d.append(Message(role="assistant", content="Here is what I found."))
        if i % 3 == 0:  # a second round
            d.append(Message(role="user", content=USERS[(i + 1) % len(USERS)]))
        out.append(d)
    return out


DIALOGS = dialogs()


def test_enough_dialogs_cover_every_role_and_both_stop_tokens() -> None:
    assert len(DIALOGS) >= 40
    roles = {m.role for d in DIALOGS for m in d}
    assert roles == {"system", "user", "assistant", "ipython"}
    tools = {c.name for d in DIALOGS for m in d for c in m.tool_calls}
    assert {"brave_search", "wolfram_alpha", "code_interpreter", "trending_songs"} <= tools
    assert {m.stop_reason for d in DIALOGS for m in d if m.role == "assistant"} >= {"end_of_message", None}


@pytest.mark.parametrize("index", range(len(DIALOGS)))
def test_dialog_prompt_is_token_identical_to_llama_models(fmt, ref, index) -> None:
    dialog = DIALOGS[index]
    assert fmt.encode_dialog_prompt(dialog) == ref.encode_dialog_prompt([to_meta(m) for m in dialog]).tokens
    # A finished dialog is the same tokens without the open assistant header.
    tokens, mask = fmt.encode_dialog(dialog)
    expected = [128000] + [t for m in dialog for t in ref.encode_message(to_meta(m), ToolPromptFormat.json)[0]]
    assert tokens == expected and len(mask) == len(tokens)


@pytest.mark.parametrize("index", range(len(DIALOGS)))
def test_assistant_turns_decode_back_to_what_was_encoded(fmt, ref, index) -> None:
    for message in DIALOGS[index]:
        if message.role != "assistant":
            continue
        _, body = fmt.encode_message(message)
        decoded = fmt.decode_assistant_message(body)
        assert decoded.content == message.content
        assert [(c.name, c.arguments) for c in decoded.tool_calls] == [
            (c.name, c.arguments) for c in message.tool_calls
        ]
        assert decoded.stop_reason == (message.stop_reason or "end_of_turn")
        theirs = ref.decode_assistant_message(body, StopReason.end_of_turn)
        assert theirs.content == decoded.content
        assert [(str(getattr(c.tool_name, "value", c.tool_name)), c.arguments) for c in theirs.tool_calls] == [
            (c.name, c.arguments) for c in decoded.tool_calls
        ]


def test_model_style_python_tag_before_every_call(fmt) -> None:
    tagged = ChatFormat(fmt.tokenizer, python_tag_all_calls=True)
    call = Message(
        role="assistant", tool_calls=[ToolCall("brave_search", {"query": "gold"})], stop_reason="end_of_message"
    )
    _, body = tagged.encode_message(call)
    assert fmt.tokenizer.decode(body) == '<|python_tag|>brave_search.call(query="gold")<|eom_id|>'
    assert tagged.decode_assistant_message(body).tool_calls[0].arguments == {"query": "gold"}


def test_loss_mask_marks_exactly_the_assistant_bodies(fmt) -> None:
    dialog = DIALOGS[7]
    tokens, mask = fmt.encode_dialog(dialog)
    learned = fmt.tokenizer.decode([t for t, m in zip(tokens, mask, strict=True) if m])
    bodies = "".join(fmt.tokenizer.decode(fmt.encode_message(m)[1]) for m in dialog if m.role == "assistant")
    assert learned == bodies
    assert not mask[0] and mask[-1] == (dialog[-1].role == "assistant")


@pytest.mark.parametrize(
    "text",
    [
        '<|python_tag|>{"name": "get_weather", "parameters": ',  # truncated JSON
        '<|python_tag|>{"type": "function"}',  # JSON without a name
        "<function=lookup>{not json}</function>",
        "<|python_tag|><function=broken>{'a': }</function><|eom_id|>",
        "brave_search.call(query=unterminated",
        "[f(1, 2)]",  # positional arguments are not a call list
        "",
        "<|eot_id|>",
    ],
)
def test_malformed_calls_come_back_as_content(text) -> None:
    m = parse_assistant_text(text)
    assert m.tool_calls == [] and m.role == "assistant"


def test_decoding_random_tokens_never_raises(fmt) -> None:
    rng = random.Random(0)
    specials = list(fmt.tokenizer.special_tokens.values())[:12]
    for _ in range(300):
        ids = [rng.choice(specials) if rng.random() < 0.2 else rng.randrange(128000) for _ in range(rng.randint(0, 30))]
        fmt.decode_assistant_message(ids)


def test_custom_json_and_function_tag_and_python_list_calls_parse() -> None:
    cases = {
        '{"type": "function", "name": "trending_songs", "parameters": {"n": "10"}}': ("trending_songs", {"n": "10"}),
        '<function=trending_songs>{"n": 10}</function>': ("trending_songs", {"n": 10}),
        '[get_weather(city="Paris", days=3)]': ("get_weather", {"city": "Paris", "days": 3}),
        '{"name": "brave_search", "parameters": {"q": "llamas"}}': ("brave_search", {"query": "llamas"}),
    }
    for text, (name, args) in cases.items():
        call = parse_assistant_text(text + "<|eom_id|>").tool_calls[0]
        assert (call.name, call.arguments) == (name, args)


# -- the 3.1 guide's examples ------------------------------------------------------------------


def _guide() -> str:
    root = Path(importlib.util.find_spec("llama_models").submodule_search_locations[0])
    return (root / "llama3_1" / "prompt_format.md").read_text()


def _prompts(section: str) -> list[str]:
    return re.findall(r"##### Input Prompt Format\n```\n(.*?)\n```", section, flags=re.S)


def _turn(prompt: str, role: str, n: int = 0) -> str:
    return re.findall(rf"<\|start_header_id\|>{role}<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", prompt, flags=re.S)[n]


def test_system_prompts_match_the_31_guide() -> None:
    guide = _guide()
    builtin = _prompts(guide.split("## Builtin Tool Calling")[1])[0]
    assert _turn(builtin, "system") == system_prompt(
        tools=["brave_search", "wolfram_alpha"],
        today="21 September 2024",
        instructions="You are a helpful assistant.\n",
    )
    full = _prompts(guide.split("## Built-in tools full interaction")[1])[0]
    assert _turn(full, "system") == system_prompt(tools=["brave_search", "wolfram_alpha"], knowledge_cutoff=None)
    custom = _prompts(guide.split("## JSON based tool calling")[1])[0]
    assert _turn(custom, "system") == system_prompt(
        custom_tools=True, today="21 September 2024", instructions="You are a helpful assistant.\n"
    )


def test_custom_tool_instructions_match_the_31_guide() -> None:
    guide = _guide()
    songs = {
        "name": "trending_songs",
        "description": "Returns the trending songs on a Music site",
        "parameters": {
            "type": "object",
            "properties": [
                {"n": {"type": "object", "description": "The number of songs to return"}},
                {"genre": {"type": "object", "description": "The genre of the songs to return"}},
            ],
            "required": ["n"],
        },
    }
    json_prompt = _prompts(guide.split("## JSON based tool calling")[1])[0]
    assert _turn(json_prompt, "user", 0) == custom_tools_prompt([songs], "json")
    tagged = {
        "name": "trending_songs",
        "description": "Returns the trending songs on a Music site",
        "parameters": {
            "genre": {"description": "The genre of the songs to return", "param_type": "str", "required": False},
            "n": {"description": "The number of songs to return", "param_type": "int", "required": True},
        },
    }
    tag_prompt = _prompts(guide.split("## `<function>` based tool calling")[1])[0]
    assert _turn(tag_prompt, "user", 0) == custom_tools_prompt([tagged], "function_tag")


def test_date_objects_render_like_meta() -> None:
    import datetime

    text = system_prompt(today=datetime.date(2024, 9, 5))
    assert text == "Cutting Knowledge Date: December 2023\nToday Date: 05 September 2024"


def test_bad_messages_raise_clear_errors() -> None:
    with pytest.raises(TokenizerError, match="role 'robot'"):
        Message(role="robot")
    with pytest.raises(TokenizerError, match="message 2: tool call"):
        Message.from_dict(
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}, index=2
        )
    with pytest.raises(TokenizerError, match="only assistant messages call tools"):
        Message(role="user", tool_calls=[ToolCall("f", {})])
    with pytest.raises(TokenizerError, match="unknown built-in tools"):
        system_prompt(tools=["google"])


def test_openai_style_messages_are_accepted(fmt) -> None:
    m = Message.from_dict(
        {"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    )
    assert m.tool_calls == [ToolCall(name="f", arguments={"a": 1}, call_id="x")]
    assert Message.from_dict({"role": "tool", "content": "ok"}).role == "ipython"


def test_format_tokens_marks_the_loss_targets(fmt) -> None:
    from herd.tokenizer.base import format_tokens

    ids, mask = fmt.encode_dialog([Message(role="user", content="Hi"), Message(role="assistant", content="Hello")])
    lines = format_tokens(fmt.tokenizer, ids, mask).splitlines()
    assert lines[0] == " 128000  '<|begin_of_text|>'" and lines[-1] == f"{len(ids)} tokens"
    assert lines[-3:-1] == ["   9906  'Hello'  [target]", " 128009  '<|eot_id|>'  [target]"]
    assert sum(line.endswith("[target]") for line in lines) == sum(mask) == 2
    assert format_tokens(fmt.tokenizer, [], None) == "0 tokens"
