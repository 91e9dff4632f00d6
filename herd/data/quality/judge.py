"""Quality labels from a language model, as Llama 3 labelled its classifier's training data with Llama 2, and the
recipe that turns them into a fast classifier.

Top to bottom: the rubric and few-shot examples, `LLMJudge` (expected digit score from next-token log-probabilities,
with contextual calibration), `judge_quality` (labels from any judge), and `label_and_train_quality` (judge a
sample, fit a `TextClassifier` on part of it, report its agreement with the judge on the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from herd.data.quality.classifier import TextClassifier
from herd.data.quality.features import _SPACES
from herd.errors import DataError

if TYPE_CHECKING:
    import torch

    from herd.formats.load import Pretrained
    from herd.inference import Engine
    from herd.inference.decode_model import DecodeModel
    from herd.model import Transformer
    from herd.model.llama import TransformerBlock
    from herd.tokenizer import Tokenizer


Judge = Callable[[list[str]], Sequence[int]]
"""Maps a batch of texts to one integer label each (for quality: 1 = meets the bar, 0 = does not)."""


QUALITY_RUBRIC = (
    "Each text below is rated for quality from 0 to 3. "
    "0 = spam, gibberish, lists of keywords or links, navigation menus. "
    "1 = fragments or low-effort text. 2 = readable but thin. "
    "3 = clear, well-written, informative prose, like a good textbook or reference page."
)
# Few-shot examples in the prompt (written for this module), alternating good and bad, covering the kinds of junk the
# rubric names plus technical text and code (good). A 135M model cannot follow the rubric alone: zero-shot, its
# scores barely depend on the document (AUC 0.75 on a generated set like the tests', against 1.0 with these).
QUALITY_EXAMPLES: tuple[tuple[str, int], ...] = (
    ("Rust is a programming language that focuses on memory safety without a garbage collector. Its compiler "
     "tracks which part of the program owns each value, so most memory errors are caught before the program runs.", 3),
    ("best price cheap watches buy now free shipping cheap watches discount best watches online sale sale sale", 0),
    ("Return the number of items in the queue. The result is approximate: another thread may add or remove items "
     "before the caller uses it.", 3),
    ("xkq wprt zzlm fjdkq pqwo vnbx lkjh qqwe rtzu mnbv plok ijuh ygtf", 0),
    ('def mean(values):\n    """Arithmetic mean of a non-empty list."""\n    return sum(values) / len(values)', 3),
    ("#$%& *@^~ |<>{} []=+ ~~## &&** $$%% <<>> ^^@@", 0),
    ("The moon has no light of its own; it reflects sunlight. As it orbits the Earth we see different fractions of "
     "its lit half, which gives the phases from new moon to full moon.", 3),
    ("4821, 93, 771204, 5, 38812, 6610, 204, 99173, 12, 580, 73321, 8", 0),
    ("A hash table stores key-value pairs in an array. A hash function maps each key to a slot, so a lookup "
     "usually takes constant time; collisions are resolved by chaining or by probing other slots.", 3),
    ("Home | About | Login | Register | Cart (0) | Contact | Terms | Privacy | Sitemap", 0),
)  # fmt: skip
CONTENT_FREE = "N/A"
"""Content-free input for contextual calibration (Zhao et al., 2021, "Calibrate Before Use")."""


class LLMJudge:
    """Rate documents with a language model, as Llama 3 rated its classifier's training data with Llama 2.

    The prompt is the rubric, the few-shot examples, then the document (cut to `max_doc_tokens` tokens) and
    "Score: "; the score is E[d] under the model's next-token distribution renormalized over the digit tokens
    0..max_score. Reading logprobs instead of generated text makes every answer a valid, graded score, and makes
    the judge deterministic. The shared prefix (rubric and examples) runs once per batch through the KV cache.

    With `calibrate`, the digit probabilities are divided by those the model gives a content-free document ("N/A")
    and renormalized (contextual calibration): a small model's scores carry a prior set by the prompt, which moves
    all of them together and makes a fixed threshold meaningless. Measured with SmolLM2-135M (bf16) on 80 documents
    of the embedded corpus (40 clean, 40 planted junk): AUC 0.88 / 0.87 without / with calibration, accuracy at
    threshold 1.5 from 0.51 to 0.75 (fp32: 0.55 to 0.84).

    `model`: a loaded model, an engine, a (model, tokenizer) pair (the model a Transformer or a DecodeModel), or
    None to load the embedded SmolLM2-135M-Instruct with `load_judge(dtype=dtype, quant=quant)`.
    """

    def __init__(
        self,
        model: Pretrained | Engine | tuple[Transformer | DecodeModel, Tokenizer] | None = None,
        *,
        rubric: str = QUALITY_RUBRIC,
        examples: Sequence[tuple[str, int]] = QUALITY_EXAMPLES,
        max_score: int = 3,
        threshold: float | None = None,
        max_doc_tokens: int = 256,
        batch_size: int = 8,
        calibrate: bool = True,
        dtype: str = "bfloat16",
        quant: str = "none",
    ) -> None:
        if model is None:
            model = load_judge(dtype=dtype, quant=quant)
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model, self.tokenizer = model.model, model.tokenizer
        if not 1 <= max_score <= 9:
            raise DataError(f"max_score must be in 1..9 (one digit token per score), got {max_score}")
        if any(not 0 <= s <= max_score for _, s in examples):
            raise DataError(f"example scores must be in 0..{max_score}")
        self.max_score, self.max_doc_tokens, self.batch_size = max_score, max_doc_tokens, batch_size
        self.calibrate = calibrate
        self._prior: np.ndarray | None = None  # digit probabilities for CONTENT_FREE, computed on first use
        self.threshold = max_score / 2 if threshold is None else threshold
        tok = self.tokenizer
        head = tok.encode("Score: ")
        self.score_ids = []
        for d in range(max_score + 1):
            ids = tok.encode(f"Score: {d}")
            if len(ids) != len(head) + 1 or ids[: len(head)] != head:
                raise DataError(f"the judge's tokenizer does not encode score {d} as one token after 'Score: '")
            self.score_ids.append(ids[-1])
        shots = "".join(f"Text: {text}\nScore: {score}\n\n" for text, score in examples)
        self.prefix = ([tok.bos_id] if tok.add_bos and tok.bos_id is not None else []) + tok.encode(
            f"{rubric}\n\n{shots}Text:"
        )
        self.suffix = tok.encode("\nScore: ")

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Expected score in [0, max_score] for each text."""
        probs = self.score_probs(texts)
        if self.calibrate:
            if self._prior is None:
                self._prior = self.score_probs([CONTENT_FREE])[0]
            probs = probs / self._prior
            probs /= probs.sum(axis=1, keepdims=True)
        return probs @ np.arange(self.max_score + 1)

    def score_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), max_score + 1): the next-token distribution after each prompt, renormalized to the digits."""
        tok = self.tokenizer
        docs = [tok.encode(" " + _SPACES.sub(" ", t).strip())[: self.max_doc_tokens] + self.suffix for t in texts]
        out = np.zeros((len(docs), self.max_score + 1))
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))  # similar lengths batch together: less padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logprobs = self._next_token_logprobs([docs[i] for i in chunk])[:, self.score_ids]
            out[chunk] = logprobs.softmax(dim=-1).double().numpy()
        return out

    def __call__(self, texts: list[str]) -> list[int]:
        """1 where the expected score reaches `threshold`, else 0."""
        return [int(s >= self.threshold) for s in self.scores(texts)]

    def _next_token_logprobs(self, suffixes: list[list[int]]) -> torch.Tensor:
        """(B, V) next-token log-probabilities after prefix + suffix[i], with the prefix computed once.

        The prefix fills cache row 0, is copied to the other rows, then the left-padded suffixes run from slot L
        with a mask that shows them the whole prefix and their own real tokens.
        """
        import torch

        from herd.inference.decode_model import model_device
        from herd.model import causal_mask

        model, prefix = self.model, self.prefix
        B, L, S = len(suffixes), len(prefix), max(map(len, suffixes))
        if L + S > model.args.max_seq_len:
            raise DataError(f"judge prompt of {L + S} tokens exceeds the model's context ({model.args.max_seq_len})")
        device = model_device(model)
        tokens = torch.zeros(B, S, dtype=torch.long, device=device)
        valid = torch.ones(B, L + S, dtype=torch.bool, device=device)
        for i, s in enumerate(suffixes):
            tokens[i, S - len(s) :] = torch.tensor(s, dtype=torch.long)
            valid[i, L : L + S - len(s)] = False
        positions = L + (valid[:, L:].cumsum(dim=1) - 1).clamp(min=0)
        mask = causal_mask(S, L + S, L, device=device) & valid[:, None, :]  # every row sees the prefix: none empty
        model.setup_caches(B, L + S)
        try:
            with torch.inference_mode():
                model(torch.tensor([prefix], device=device), cache_pos=0)
                for k, v in _kv_caches(model):
                    k[1:B, :, :L] = k[:1, :, :L]
                    v[1:B, :, :L] = v[:1, :, :L]
                logits = model(tokens, positions_BT=positions, mask=mask[:, None], cache_pos=L)[:, -1]
        finally:
            model.clear_caches()
        return logits.float().log_softmax(dim=-1).cpu()


def load_judge(
    name_or_path: str | None = None, *, dtype: str = "bfloat16", quant: str = "none"
) -> tuple[Transformer | DecodeModel, Tokenizer]:
    """The judge's model and tokenizer (None: the embedded SmolLM2-135M-Instruct). Unquantized, herd's Transformer
    in `dtype`: bf16 is the fast CPU path for the judge's long prompts (2.2x fp32) and gave the same ranking on the
    test set. With `quant` int8/int4, a DecodeModel with weight-only quantized weights (a GGUF file's stored
    blocks reused where at least as precise), `dtype` for the weights that stay unquantized."""
    from herd.formats.load import parse_dtype

    if quant == "none":
        from herd.formats import load_pretrained

        pretrained = load_pretrained(name_or_path, dtype=parse_dtype(dtype))
        return pretrained.model, pretrained.tokenizer
    from herd.inference.load import load_decoder

    decoder = load_decoder(name_or_path, dtype=parse_dtype(dtype), quant=quant)
    return decoder.model, decoder.tokenizer


def _kv_caches(model: Transformer | DecodeModel) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's key and value cache, (B, K, S, H), after `setup_caches`."""
    import torch

    from herd.inference.decode_model import DecodeModel

    if isinstance(model, DecodeModel):
        for block in model.layers:
            k, v = block.k_cache, block.v_cache
            assert isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)  # setup_caches
            yield k, v
        return
    for layer in model.layers.values():
        cache = cast("TransformerBlock", layer).attention.kv_cache  # ModuleDict values type as Module
        assert cache is not None  # setup_caches
        yield cache.k, cache.v


def judge_quality(texts: Sequence[str], judge: Judge | Pretrained | Engine | None = None) -> list[int]:
    """Quality labels (1 = meets the bar, 0 = not) from a judge: an `LLMJudge` or any callable texts -> labels;
    a loaded model or engine is wrapped in an `LLMJudge`; None uses the embedded SmolLM2-135M-Instruct."""
    if judge is None or not callable(judge):
        judge = LLMJudge(judge)
    labels = list(judge(list(texts)))
    if len(labels) != len(texts):
        raise DataError(f"judge returned {len(labels)} labels for {len(texts)} texts")
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
        raise DataError(f"judge must return integer labels, got {type(labels[0]).__name__}")
    return [int(v) for v in labels]


@dataclass(frozen=True)
class QualityTrainingReport:
    num_labeled: int
    num_train: int
    num_heldout: int
    label_counts: dict[int, int]
    """How many sampled documents the judge gave each label."""
    agreement: float
    """Fraction of held-out documents where the classifier's label equals the judge's."""
    precision: float
    """Of held-out documents the classifier labels 1, the fraction the judge labels 1 (binary labels only)."""
    recall: float
    """Of held-out documents the judge labels 1, the fraction the classifier labels 1 (binary labels only)."""


def label_and_train_quality(
    texts: Sequence[str],
    judge: Judge | Pretrained | Engine | None = None,
    *,
    sample_size: int | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    **classifier_kwargs: Any,
) -> tuple[TextClassifier, QualityTrainingReport]:
    """Llama 3's recipe: judge a random sample, fit the fast classifier on part of it, measure it on the rest.

    The returned classifier is the one fitted on the training part, so the report describes it exactly.
    """
    if not 0 < heldout_fraction < 1:
        raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    rng = np.random.default_rng(seed)
    n = len(texts) if sample_size is None else min(sample_size, len(texts))
    picked = np.sort(rng.choice(len(texts), size=n, replace=False))
    sample = [texts[i] for i in picked]
    labels = np.array(judge_quality(sample, judge))
    perm = rng.permutation(n)
    num_heldout = max(1, round(n * heldout_fraction))
    held, train = perm[:num_heldout], perm[num_heldout:]
    if len(train) < 2 or len(set(labels[train].tolist())) < 2:
        found = {int(v): int(c) for v, c in zip(*np.unique(labels, return_counts=True), strict=True)}
        raise DataError(f"judge labels {found} leave fewer than two classes to train on; judge a larger sample")
    clf = TextClassifier(**classifier_kwargs).fit([sample[i] for i in train], labels[train].tolist())
    predicted = np.array(clf.predict([sample[i] for i in held]))
    truth = labels[held]
    tp = int(np.sum((predicted == 1) & (truth == 1)))
    values, counts = np.unique(labels, return_counts=True)
    report = QualityTrainingReport(
        num_labeled=n,
        num_train=len(train),
        num_heldout=len(held),
        label_counts={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        agreement=float(np.mean(predicted == truth)),
        precision=tp / max(1, int(np.sum(predicted == 1))),
        recall=tp / max(1, int(np.sum(truth == 1))),
    )
    return clf, report
