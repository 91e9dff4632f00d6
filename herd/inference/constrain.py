"""Constrained decoding: only tokens that keep the output a prefix of JSON valid for a schema, so a forced tool
call or `response_format=json_object` gives schema-valid JSON even from a small model that would rather write prose.

Schema subset (what OpenAI function `parameters` use):
- `type` (a name or a list); `enum` / `const` (values as `json.dumps` writes them, compact or default separators;
  they take precedence over `type`); `anyOf` / `oneOf` (alternatives tracked in parallel, each merged over the
  schema's other keywords; oneOf's exclusivity is not enforced).
- object: `properties`, `required`, `additionalProperties` (default: none when `properties` is given, any
  otherwise); keys in any order, no duplicates. array: `items`, `minItems`, `maxItems`. string: `minLength`,
  `maxLength`, JSON escapes. number / integer: the JSON grammar (integer: no fraction or exponent).
`$ref` raises ValueError; every other keyword (`minimum`, `pattern`, `format`, `allOf`...) is ignored.

Every accepted path ends, so a model cannot ramble forever inside the constraint: strings hold at most `max_string`
characters, numbers `max_number`, arrays (and objects with free keys) `max_items` entries, values without a schema
nest at most `_MAX_DEPTH` deep, at most 2 whitespace characters may follow each other and none the final value,
and a character that would leave no way to finish is rejected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import torch

from herd.errors import InferenceError
from herd.inference.sampling import SamplingParams, penalized_logits, token_probs
from herd.tokenizer.base import Tokenizer

_KINDS = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_MAX_DEPTH = 6
"""Values with no schema (items of a bare array, values of a bare object) stop nesting containers this deep."""
_MAX_WS = 2
_WS = frozenset(" \t\n\r")
_HEX = frozenset("0123456789abcdefABCDEF")
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')  # string characters that need no escape
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

# Parser frames are tuples whose first item is the kind; a stack is a linked list (frame, parent) or None, so
# stacks are immutable, shared between states and copied for free.
_VALUE, _OBJ, _KEY, _FREE_KEY, _ARR, _STR, _NUM, _LIT = range(8)
# Object phases: after "{", after ",", after a key, after a value. Array phases: after "[", after ",", after an item.
_O_FIRST, _O_KEY, _O_COLON, _O_AFTER = range(4)
_A_FIRST, _A_NEXT, _A_AFTER = range(3)


def _number_table() -> tuple[dict[tuple[int, str], int], frozenset[int], dict[int, int]]:
    """JSON number grammar: transitions (state, char) -> state, complete states, chars still needed per state."""
    minus, zero, whole, dot, frac, exp, exp_sign, exp_digits = range(8)
    table: dict[tuple[int, str], int] = {}
    for d in "0123456789":
        table[minus, d] = zero if d == "0" else whole
        for src, dst in ((whole, whole), (dot, frac), (frac, frac), (exp, exp_digits), (exp_sign, exp_digits)):
            table[src, d] = dst
        table[exp_digits, d] = exp_digits
    for src in (zero, whole):
        table[src, "."] = dot
    for src in (zero, whole, frac):
        table[src, "e"] = table[src, "E"] = exp
    table[exp, "+"] = table[exp, "-"] = exp_sign
    return table, frozenset({zero, whole, frac, exp_digits}), {minus: 1, dot: 1, exp: 1, exp_sign: 1}


_NUM_NEXT, _NUM_COMPLETE, _NUM_NEED = _number_table()
_NUM_START = {"-": 0, "0": 1, **dict.fromkeys("123456789", 2)}
_INT_NEXT = {(state, c): new for (state, c), new in _NUM_NEXT.items() if c not in ".eE"}


class _Node:
    """A compiled schema: what a value there may be, with the caps already applied."""

    alts: tuple[_Node, ...] = ()
    literals: tuple[str, ...] | None = None
    kinds: frozenset[str] = _KINDS
    integer = False
    props: dict[str, _Node]
    required: frozenset[str] = frozenset()
    key_texts: dict[str, str]
    """Key -> its JSON text after the opening quote, for properties and required keys."""
    additional: _Node | None = None
    key_cap = 0
    items: _Node
    key_max = min_items = max_items = min_len = max_len = max_number = 0


class _Compiler:
    def __init__(self, max_string: int, max_items: int, max_number: int) -> None:
        self.max_string, self.max_items, self.max_number = max_string, max_items, max_number
        self._any: dict[int, _Node] = {}  # schemaless nodes by depth; shared, else {} would compile 2^depth nodes

    def node(self, schema: Any, depth: int) -> _Node:
        if schema is True or schema == {}:
            if depth not in self._any:
                self._any[depth] = self._compile({}, depth)
            return self._any[depth]
        if not isinstance(schema, dict):
            raise ValueError(f"a schema must be a JSON object, got {schema!r:.60}")
        return self._compile(schema, depth)

    def _compile(self, schema: dict[str, Any], depth: int) -> _Node:
        if "$ref" in schema:
            raise ValueError(f"$ref is not supported in constrained decoding ({schema['$ref']!r})")
        node = _Node()
        alts = schema.get("anyOf", schema.get("oneOf"))
        if alts is not None:
            if not alts or not all(isinstance(a, dict) for a in alts):
                raise ValueError(f"anyOf/oneOf must be a non-empty list of schemas, got {alts!r:.60}")
            base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            node.alts = tuple(self.node({**base, **a}, depth) for a in alts)
            return node
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            if not values:
                raise ValueError("enum must not be empty")
            forms = (json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values)
            node.literals = tuple(dict.fromkeys([*forms, *(json.dumps(v, ensure_ascii=False) for v in values)]))
            return node
        kind = schema.get("type")
        if kind is not None:
            kinds = frozenset([kind] if isinstance(kind, str) else kind)
            if not kinds or kinds - _KINDS:
                raise ValueError(f"unsupported type {kind!r}")
            node.kinds = kinds
        elif depth >= _MAX_DEPTH:
            node.kinds = _KINDS - {"object", "array"}
        node.integer = "number" not in node.kinds
        node.max_number = self.max_number
        if "object" in node.kinds:
            props = schema.get("properties") or {}
            node.props = {k: self.node(v, depth + 1) for k, v in props.items()}
            node.required = frozenset(schema.get("required", ()))
            extra = schema.get("additionalProperties", not props)
            node.additional = None if extra is False else self.node({} if extra is True else extra, depth + 1)
            if node.additional is None and not node.required <= props.keys():
                raise ValueError(f"required keys {sorted(node.required - props.keys())} are not in properties")
            node.key_cap = len(props) if node.additional is None else max(self.max_items, len(node.required))
            node.key_texts = {k: json.dumps(k, ensure_ascii=False)[1:] for k in [*props, *node.required]}
            node.key_max = self.max_string
        if "array" in node.kinds:
            node.items = self.node(schema.get("items", {}), depth + 1)
            node.min_items = schema.get("minItems", 0)
            node.max_items = min(schema.get("maxItems", self.max_items), self.max_items)
            if node.min_items > node.max_items:
                raise ValueError(f"minItems {node.min_items} exceeds the cap of {node.max_items} items")
        if "string" in node.kinds:
            node.min_len = schema.get("minLength", 0)
            node.max_len = min(schema.get("maxLength", self.max_string), self.max_string)
            if node.min_len > node.max_len:
                raise ValueError(f"minLength {node.min_len} exceeds the cap of {node.max_len} characters")
        return node


_Stack = tuple[tuple[Any, ...], Any] | None
_State = tuple[_Stack, int]  # the stack and how many whitespace characters came just before


def _start(node: _Node, c: str, parent: _Stack) -> list[_State]:
    """The states after `c`, the first character of a value of `node` (parent: the frames below it)."""
    if node.alts:
        return [state for alt in node.alts for state in _start(alt, c, parent)]
    if node.literals is not None:
        texts = tuple(t for t in node.literals if t[0] == c)
        if not texts:
            return []
        return [(parent if texts == (c,) else ((_LIT, texts, 1), parent), 0)]
    kinds = node.kinds
    if c == '"' and "string" in kinds:
        return [(((_STR, node, 0, ""), parent), 0)]
    if c == "{" and "object" in kinds:
        return [(((_OBJ, node, frozenset(), _O_FIRST, None), parent), 0)]
    if c == "[" and "array" in kinds:
        return [(((_ARR, node, 0, _A_FIRST), parent), 0)]
    if c in _NUM_START and ("number" in kinds or "integer" in kinds):
        return [(((_NUM, node, _NUM_START[c], 1), parent), 0)]
    text = {"t": "true", "f": "false", "n": "null"}.get(c)
    if text is not None and ("null" if c == "n" else "boolean") in kinds:
        return [(((_LIT, (text,), 1), parent), 0)]
    return []


def _string_char(esc: str, c: str) -> tuple[str, str | None] | None:
    """Inside a string body (closing quote excluded): (escape in progress, completed character) after `c`."""
    if not esc:
        if c == "\\":
            return "\\", None
        return None if c < " " else ("", c)
    if esc == "\\":
        if c == "u":
            return "\\u", None
        ch = _ESCAPES.get(c)
        return None if ch is None else ("", ch)
    if c not in _HEX:
        return None
    esc += c
    return ("", chr(int(esc[2:], 16))) if len(esc) == 6 else (esc, None)


def _key_frame(node: _Node, seen: frozenset[str]) -> tuple[Any, ...]:
    missing = node.required - seen
    if node.additional is not None and len(seen) + len(missing) < node.key_cap:
        return (_FREE_KEY, "", "")
    # Fixed keys: the unseen properties, or only the missing required keys once they need all the room left.
    names = [k for k in node.props if k not in seen] if node.additional is None else sorted(missing)
    return (_KEY, tuple((node.key_texts[k], k) for k in names), 0)


def _after_key(obj_stack: Any, key: str) -> _State:
    (_, node, seen, _, _), parent = obj_stack
    value = node.props.get(key, node.additional)
    return ((_OBJ, node, seen | {key}, _O_COLON, value), parent), 0


def _step(stack: Any, ws: int, c: str) -> list[_State]:
    """The states after feeding `c` to one state."""
    frame, parent = stack
    kind = frame[0]
    if kind == _STR:
        _, node, n, esc = frame
        if not esc and c == '"':
            return [(parent, 0)] if n >= node.min_len else []
        if not esc and n >= node.max_len:
            return []
        r = _string_char(esc, c)
        return [] if r is None else [(((_STR, node, n + (r[1] is not None), r[0]), parent), 0)]
    if kind == _NUM:
        _, node, state, n = frame
        out: list[_State] = []
        new = (_INT_NEXT if node.integer else _NUM_NEXT).get((state, c))
        if new is not None and n + 1 + _NUM_NEED.get(new, 0) <= node.max_number:
            out.append((((_NUM, node, new, n + 1), parent), 0))
        if state in _NUM_COMPLETE and parent is not None:
            out += _step(parent, 0, c)
        return out
    if kind == _LIT:
        _, texts, pos = frame
        lit_out: list[_State] = []
        if going := tuple(t for t in texts if len(t) > pos and t[pos] == c):
            ended = all(len(t) == pos + 1 for t in going)
            lit_out.append((parent if ended else ((_LIT, going, pos + 1), parent), 0))
        if parent is not None and any(len(t) == pos for t in texts):
            lit_out += _step(parent, 0, c)
        return lit_out
    if kind == _KEY:
        _, options, pos = frame
        going = tuple(o for o in options if o[0][pos] == c)
        if not going:
            return []
        for text, key in going:
            if len(text) == pos + 1:
                return [_after_key(parent, key)]
        return [(((_KEY, going, pos + 1), parent), 0)]
    if kind == _FREE_KEY:
        _, key, esc = frame
        obj_seen = parent[0][2]
        if not esc and c == '"':
            return [] if key in obj_seen else [_after_key(parent, key)]
        max_len = parent[0][1].key_max
        if not esc and len(key) >= max_len:
            return []
        r = _string_char(esc, c)
        if r is None:
            return []
        if r[1] is not None:
            key += r[1]
            if len(key) == max_len and key in obj_seen:  # only the closing quote could follow, and it would fail
                return []
        return [(((_FREE_KEY, key, r[0]), parent), 0)]
    if c in _WS:
        return [(stack, ws + 1)] if ws < _MAX_WS else []
    if kind == _VALUE:
        return _start(frame[1], c, parent)
    if kind == _OBJ:
        _, node, seen, phase, value = frame
        if phase == _O_COLON:
            return [(((_VALUE, value), ((_OBJ, node, seen, _O_AFTER, None), parent)), 0)] if c == ":" else []
        if c == "}" and phase != _O_KEY:
            return [(parent, 0)] if node.required <= seen else []
        room = len(seen) < node.key_cap
        if phase == _O_AFTER:
            return [(((_OBJ, node, seen, _O_KEY, None), parent), 0)] if c == "," and room else []
        return [((_key_frame(node, seen), stack), 0)] if c == '"' and room else []
    # _ARR
    _, node, count, phase = frame
    if phase == _A_AFTER:
        if c == "," and count < node.max_items:
            return [(((_ARR, node, count, _A_NEXT), parent), 0)]
        return [(parent, 0)] if c == "]" and count >= node.min_items else []
    if c == "]" and phase == _A_FIRST:
        return [(parent, 0)] if node.min_items == 0 else []
    if count >= node.max_items:
        return []
    return _start(node.items, c, ((_ARR, node, count + 1, _A_AFTER), parent))


def _can_end(stack: Any) -> bool:
    """Whether the value is complete, once numbers and literals that could end here (no closing character) do."""
    while stack is not None:
        frame = stack[0]
        number_ends = frame[0] == _NUM and frame[2] in _NUM_COMPLETE
        if not number_ends and not (frame[0] == _LIT and frame[2] in map(len, frame[1])):
            return False
        stack = stack[1]
    return True


def _advance(states: list[_State], text: str) -> list[_State] | None:
    """The states after feeding `text`, None when it cannot follow."""
    i = 0
    while i < len(text):
        top = states[0][0] if len(states) == 1 else None
        if top is not None and top[0][0] == _STR and not top[0][3] and (run := _PLAIN.match(text, i)):
            # Inside a string most of a token is plain characters: take them in one go.
            _, node, n, _ = top[0]
            if n + run.end() - i > node.max_len:
                return None
            states = [(((_STR, node, n + run.end() - i, ""), top[1]), 0)]
            i = run.end()
            continue
        c = text[i]
        i += 1
        following = [new for stack, ws in states if stack is not None for new in _step(stack, ws, c)]
        if not following:
            return None
        states = following if len(following) == 1 else list(dict.fromkeys(following))
    return states


class JsonConstraint:
    """Character-level incremental validator: the text fed so far is always a prefix of some JSON value valid
    for `schema` (None or {}: any JSON value; {"type": "object"}: any object). See the module docstring for the
    schema subset and the caps that make every accepted path end."""

    def __init__(
        self, schema: dict[str, Any] | None = None, *, max_string: int = 256, max_items: int = 16, max_number: int = 24
    ) -> None:
        if max_string < 1 or max_items < 1 or max_number < 2:
            raise ValueError("need max_string >= 1, max_items >= 1 and max_number >= 2")
        root = _Compiler(max_string, max_items, max_number).node(schema or {}, 0)
        # Several states when anyOf alternatives (or a number that may end or go on) are still open.
        self._states: list[_State] = [(((_VALUE, root), None), 0)]
        self._pieces: list[str] = []

    def copy(self) -> JsonConstraint:
        other = object.__new__(JsonConstraint)
        other._states, other._pieces = self._states, list(self._pieces)  # states are immutable, hence shared
        return other

    def accepts(self, text: str) -> bool:
        """Whether feeding `text` keeps the output a valid prefix; "" never does (every token must advance)."""
        return bool(text) and _advance(self._states, text) is not None

    def feed(self, text: str) -> None:
        states = _advance(self._states, text) if text else None
        if states is None:
            raise ValueError(f"{text!r} cannot follow {self.text[-40:]!r} under the JSON schema")
        self._states = states
        self._pieces.append(text)

    @property
    def done(self) -> bool:
        """The text is one complete valid value (a bare top-level number counts once it could end)."""
        return any(_can_end(stack) for stack, _ in self._states)

    @property
    def text(self) -> str:
        return "".join(self._pieces)


_HEAD = 1024
"""Tokens ranked by a cheap top-k first; a full sort of the vocabulary costs tens of milliseconds on a CPU."""
_GROUPS: dict[int, tuple[Sequence[str], dict[str, dict[str, list[int]]]]] = {}


def _groups(texts: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """Token ids by first character, then by first two, built once per token list (which must not change)."""
    entry = _GROUPS.get(id(texts))
    if entry is None or entry[0] is not texts:  # holding `texts` keeps its id from being reused
        if len(_GROUPS) >= 4:
            _GROUPS.clear()
        groups: dict[str, dict[str, list[int]]] = {}
        for i, text in enumerate(texts):
            if text:
                groups.setdefault(text[0], {}).setdefault(text[:2], []).append(i)
        entry = _GROUPS[id(texts)] = (texts, groups)
    return entry[1]


class _Checker:
    """Which tokens the constraint accepts now. Most tokens fail within two characters and many share those two
    (" the", " to"...), so the states after each distinct head are kept."""

    def __init__(self, constraint: JsonConstraint, texts: Sequence[str]) -> None:
        self.texts = texts
        self.after: dict[str, list[_State] | None] = {"": constraint._states}

    def head(self, prefix: str) -> list[_State] | None:
        """The states after a prefix of one or two characters."""
        if prefix not in self.after:
            base = self.head(prefix[:-1])
            self.after[prefix] = None if base is None else _advance(base, prefix[-1])
        return self.after[prefix]

    def accepts(self, i: int) -> bool:
        text = self.texts[i] if i < len(self.texts) else ""
        states = self.head(text[:2]) if text else None
        return states is not None and (len(text) <= 2 or _advance(states, text[2:]) is not None)

    def all_accepted(self, skip: set[int], vocab_size: int) -> list[int]:
        """Every accepted id below vocab_size not in `skip`; a rejected first character or head prunes its group,
        so a structural position (where the model would rather write prose) checks a few hundred heads."""
        found = []
        for first, heads in _groups(self.texts).items():
            if self.head(first) is not None:
                for head, ids in heads.items():
                    if self.head(head) is not None:
                        found += [i for i in ids if i < vocab_size and i not in skip and self.accepts(i)]
        return found


def constrained_token(
    logits_V: torch.Tensor,
    constraint: JsonConstraint,
    token_texts: Sequence[str],
    params: SamplingParams,
    generator: torch.Generator | None,
    stop_id: int,
    seen_V: torch.Tensor | None = None,
    candidates: int = 256,
) -> int:
    """The next token under `constraint`: `stop_id` once it is done, else the best `candidates` tokens by
    (penalized) logit that it accepts, looking through the whole vocabulary if needed, and then the best of them
    (temperature 0) or a draw from their distribution after temperature / top-k / top-p, as `sample_token`
    would. The caller feeds `token_texts[token]` to the constraint."""
    if constraint.done:
        return stop_id
    logits_V = penalized_logits(logits_V, params, seen_V)
    wanted = 1 if params.temperature == 0 else candidates  # greedy takes the first accepted token
    checker = _Checker(constraint, token_texts)
    head = torch.topk(logits_V, min(_HEAD, logits_V.numel())).indices.tolist()
    accepted: list[int] = []
    for i in head:
        if checker.accepts(i):
            accepted.append(i)
            if len(accepted) == wanted:
                break
    if len(accepted) < wanted:  # all the rest rank below the head: rank only the accepted ones
        rest = checker.all_accepted(set(head), logits_V.numel())
        if rest:
            logits_R = logits_V[torch.tensor(rest, device=logits_V.device)]
            accepted += [rest[j] for j in torch.topk(logits_R, min(wanted - len(accepted), len(rest))).indices.tolist()]
    if not accepted:
        raise InferenceError(f"no token can continue {constraint.text[-40:]!r} under the JSON schema")
    if params.temperature == 0:
        return accepted[0]
    probs = token_probs(logits_V[torch.tensor(accepted, device=logits_V.device)], params)
    return accepted[int(torch.multinomial(probs, 1, generator=generator))]


def token_texts(tokenizer: Tokenizer) -> list[str]:
    """The text of every token id, "" (never accepted) for special tokens and for byte fragments of a character
    (they decode to U+FFFD alone). A SentencePiece tokenizer that drops a lone token's leading space gives
    texts without it, so a constrained output may lack spaces its tokens would really decode to."""
    special = set(tokenizer.stop_ids) | set(getattr(tokenizer, "special_tokens", {}).values())
    special |= {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None}
    texts = []
    for i in range(tokenizer.vocab_size):
        text = "" if i in special else tokenizer.decode([i])
        texts.append("" if "\ufffd" in text else text)
    return texts
