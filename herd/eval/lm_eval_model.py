"""herd's model for lm-evaluation-harness: `--model herd --model_args pretrained=M,dtype=float32 --batch_size 16`.

Importing this module registers the model with lm-eval (`lm_eval.api.registry.register_model("herd")`); lm-eval
0.4.13 has no plugin discovery, so `herd eval harness`, `python -m herd.eval.lm_eval` or a script that imports this
module first are the ways in. Only harness.py imports it, inside functions: lm-eval and torch stay off herd's
start-up path.

It follows lm-eval's `hf` model (HFLM) request by request, so the two give the same numbers on one checkpoint:
the same tokenization (TemplateLM's `_encode_pair`; BOS as the tokenizer adds it, e.g. none for SmolLM2, one for
Llama 3), the same empty-context prefix token (bos, else eos), the same left truncation to max_length and the same
rolling windows. Log-likelihoods come from herd's training Transformer (logits at every position), batched by
descending length with right padding (the padding comes after every scored token, so causal attention never sees
it). generate_until runs herd's Engine: KV cache, batches of left-padded prompts, `until` stop strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models before herd's is added)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from herd.errors import EvalError
from herd.formats.load import load_pretrained, parse_dtype
from herd.inference.decode_model import DecodeModel, GenerationModel
from herd.inference.engine import Engine
from herd.inference.quantize import check_quant
from herd.inference.sampling import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_AUTO_BATCH = 16
"""batch_size=auto: HFLM probes the largest batch that fits; herd takes this many sequences (or max_batch_size)."""
LOGIT_CHUNK = 1024
"""Scored positions projected to the vocabulary at a time: a long rolling window's full (T, V) logits are large."""

Request = tuple[tuple[str, str] | None, list[int], list[int]]
"""(the (context, continuation) strings or None for a rolling window, context ids, continuation ids)."""


@register_model("herd")
class HerdLM(TemplateLM):
    def __init__(
        self,
        pretrained: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        quant: str = "none",
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        device: str | None = None,
        **unknown: Any,
    ) -> None:
        """`pretrained`: an embedded model's name, an HF or Meta directory or a .gguf file (default: the embedded
        SmolLM2). `quant` (int8, int4) applies to generation only: log-likelihoods use the unquantized weights."""
        super().__init__()
        unknown.pop("trust_remote_code", None)  # lm-eval's CLI adds it for every model; herd runs no remote code
        if unknown:
            raise EvalError(f"--model herd: unknown model_args {', '.join(sorted(unknown))}")
        torch_dtype = parse_dtype(dtype)
        check_quant(quant, torch_dtype)
        self._device = _pick_device(device)
        loaded = load_pretrained(pretrained, dtype=torch_dtype, device=str(self._device))
        self.model, self.tok, self.name = loaded.model.eval(), loaded.tokenizer, loaded.name
        self.format = loaded.checkpoint.format
        self.quant = quant
        self._gen_model: GenerationModel | None = None
        self._batch_size = _parse_batch_size(batch_size, max_batch_size)
        self._max_length = int(max_length or self.model.args.max_seq_len)
        self._max_gen_toks = int(max_gen_toks)
        # HFLM: add_bos_token None means "as the tokenizer does by default" (SmolLM2 adds none, Llama 3 adds one).
        self.add_bos_token = self.tok.add_bos if add_bos_token is None else bool(add_bos_token)
        if self.add_bos_token and self.tok.bos_id is None:
            raise EvalError(f"--model herd: add_bos_token=True but {self.name}'s tokenizer has no bos token")
        self._prefix_token_id = prefix_token_id
        self._prefix_text = self.tok.decode([self.prefix_token_id])
        self._eot_text = self.tok.decode([self.eot_token_id])

    # -- what lm-eval reads --------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """Conditions an empty context and the first rolling window: bos, else eos (as HFLM)."""
        if self._prefix_token_id is not None:
            return self._prefix_token_id
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"herd:{self.name}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        return getattr(self.tok, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The dialog as text in the model's chat format; `tok_encode` reads its special tokens back as tokens."""
        render = getattr(self.tok, "render_chat", None)
        if render is not None:
            return str(render(chat_history, add_generation_prompt=add_generation_prompt))
        return self.tok.decode(self.tok.encode_chat(chat_history, add_generation_prompt=add_generation_prompt))

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.tok_embeddings.weight.dtype).removeprefix("torch."),
            "herd_model": self.name,
            "herd_format": self.format,
            "herd_quant_generation": self.quant,
        }

    # -- tokens ----------------------------------------------------------------------------------

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **_: Any
    ) -> list[int]:
        # Special-token text inside a string becomes the special token, as HF tokenizers do (chat templates).
        bos = self.add_bos_token if add_special_tokens is None else bool(add_special_tokens) and self.add_bos_token
        if add_special_tokens is None and self._prefix_text and string.startswith(self._prefix_text):
            bos = False  # the string brings its own BOS
        ids = self.tok.encode(string, bos=bos, allow_special=True)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(list(tokens))

    # -- log-likelihoods -------------------------------------------------------------------------

    @torch.inference_mode()
    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives the continuation).

        Requests with the same input row (context + continuation less its last token) share one forward: the
        choices of a multiple-choice question with one-token answers all read the last position of the question
        (HFLM's logits cache does the same for one-token continuations)."""
        by_row: dict[tuple[int, ...], list[int]] = {}
        for i, (_key, context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise EvalError("a loglikelihood request needs a non-empty context and continuation (in tokens)")
            if len(continuation) > self.max_length:
                raise EvalError(f"a continuation of {len(continuation)} tokens is longer than max_length")
            row = (context + continuation)[-(self.max_length + 1) :][:-1]  # the last token is only a target
            by_row.setdefault(tuple(row), []).append(i)
        # Longest first, as HFLM: a batch's first row sets its padded length, and memory trouble shows at once.
        rows = sorted(by_row, key=lambda r: (-len(r), r))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="herd loglikelihood") as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                users = [[(i, requests[i][2]) for i in by_row[r]] for r in batch]
                for i, answer in self._score_rows(batch, users):
                    results[i] = answer
                    if (key := requests[i][0]) is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(sum(len(u) for u in users))
        return [r for r in results if r is not None]

    def _score_rows(
        self, rows: list[tuple[int, ...]], users: list[list[tuple[int, list[int]]]]
    ) -> Iterator[tuple[int, tuple[float, bool]]]:
        """One forward over right-padded `rows`; each row's users (request index, continuation) score its last
        len(continuation) positions."""
        T = max(len(r) for r in rows)
        tokens_BT = torch.full((len(rows), T), self.eot_token_id, dtype=torch.long)
        scored_BT = torch.zeros(len(rows), T, dtype=torch.bool)  # positions whose next token some request scores
        # One entry per scored token: its index among the scored positions, its target, its request.
        position: list[int] = []
        target: list[int] = []
        owner: list[int] = []
        offset = 0
        for b, (row, row_users) in enumerate(zip(rows, users, strict=True)):
            tokens_BT[b, : len(row)] = torch.tensor(row)
            span = max(len(cont) for _, cont in row_users)
            scored_BT[b, len(row) - span : len(row)] = True
            for i, cont in row_users:
                position += range(offset + span - len(cont), offset + span)
                target += cont
                owner += [i] * len(cont)
            offset += span
        hidden_ND = self.model(tokens_BT.to(self._device), return_hidden=True)[scored_BT.to(self._device)]
        position_E = torch.tensor(position, device=self._device)
        target_E = torch.tensor(target, device=self._device)
        logprob_E = torch.empty(len(target), dtype=torch.float64, device=self._device)
        greedy_E = torch.empty(len(target), dtype=torch.bool, device=self._device)
        for s in range(0, offset, LOGIT_CHUNK):
            logits_CV = self.model.output(hidden_ND[s : s + LOGIT_CHUNK]).float()
            logprobs_CV, best_C = logits_CV.log_softmax(dim=-1), logits_CV.argmax(dim=-1)
            here = (position_E >= s) & (position_E < s + LOGIT_CHUNK)
            at_E, tgt_E = position_E[here] - s, target_E[here]
            logprob_E[here] = logprobs_CV[at_E, tgt_E].double()
            greedy_E[here] = best_C[at_E] == tgt_E
        total: dict[int, float] = {}
        greedy: dict[int, bool] = {}
        for i, lp, g in zip(owner, logprob_E.cpu().tolist(), greedy_E.cpu().tolist(), strict=True):
            total[i] = total.get(i, 0.0) + lp
            greedy[i] = greedy.get(i, True) and g
        for i in total:
            yield i, (total[i], greedy[i])

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """A document's total log-likelihood over disjoint windows of max_length tokens (lm-eval's windows)."""
        windows: list[Request] = []
        owner = []
        for n, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text)
            for context, pred in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):  # fmt: skip
                windows.append((None, context, pred))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[n] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy or sampled completions, cut before the first `until` string (lm-eval adds the eos text)."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one SamplingParams per distinct gen_kwargs
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        engine = Engine(self._generation_model(), self.tok, max_batch_size=self.batch_size)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="herd generate_until") as bar:
            for indices in groups.values():
                gen_kwargs = requests[indices[0]].args[1]
                params, until = self._sampling_params(gen_kwargs)
                room = min(self.max_length, self.model.args.max_seq_len) - params.max_new_tokens
                if room < 1:
                    raise EvalError(f"max_gen_toks {params.max_new_tokens} leaves no room in max_length")
                # Similar lengths share a batch, so left padding stays short.
                indices = sorted(indices, key=lambda i: -len(self.tok_encode(requests[i].args[0])))
                prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=room) for i in indices]
                for event in engine.stream(prompts, params):
                    if event.finished is None:
                        continue
                    text = event.finished.text
                    for stop in until:  # the Engine cut at the first match already; this is lm-eval's rule
                        text = text.split(stop)[0]
                    i = indices[event.index]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), text)
                    bar.update(1)
        return [r if r is not None else "" for r in results]

    def _sampling_params(self, gen_kwargs: dict[str, Any]) -> tuple[SamplingParams, list[str]]:
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = [s for s in handle_stop_sequences(kwargs.pop("until", None), eos=self._eot_text) if s]
        max_new = int(kwargs.pop("max_gen_toks"))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        params = SamplingParams(
            max_new_tokens=max_new,
            temperature=temperature if sample else 0.0,
            top_p=float(kwargs.pop("top_p", None) or 1.0),
            top_k=int(kwargs.pop("top_k", None) or 0),
            repetition_penalty=float(kwargs.pop("repetition_penalty", None) or 1.0),
            seed=kwargs.pop("seed", None),
            stop=until,
        )
        if kwargs:
            log.warning("herd: ignoring generation settings herd's engine does not have: %s", ", ".join(kwargs))
        return params, until

    def _generation_model(self) -> GenerationModel:
        """On the CPU herd's DecodeModel (fused kernels, optional int8/int4); on a GPU the Transformer itself."""
        if self._gen_model is None:
            if self._device.type == "cpu":
                self._gen_model = DecodeModel.from_transformer(self.model, quant=self.quant)
            elif self.quant != "none":
                raise EvalError(f"quant={self.quant} runs on the CPU only (herd's int8/int4 kernels are CPU code)")
            else:
                self._gen_model = self.model
        return self._gen_model


def _pick_device(device: str | None) -> torch.device:
    # lm-eval's CLI asks for "cuda" unless told otherwise; on a machine without a GPU that means the CPU.
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            log.warning("herd: no GPU here, evaluating on the CPU (device=%s asked)", device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _parse_batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
    text = str(batch_size)
    if text.startswith("auto"):
        return int(max_batch_size or DEFAULT_AUTO_BATCH)
    try:
        value = int(text)
    except ValueError:
        raise EvalError(f"--model herd: batch_size must be a number or auto, got {batch_size!r}") from None
    if value < 1:
        raise EvalError(f"--model herd: batch_size must be >= 1, got {value}")
    return value
