"""The fast classifier: multinomial logistic regression over hashed n-gram features, its .npz file, and the score
it gives a document.

`TextClassifier` fits with full-batch L-BFGS (`_fit_logistic`, in torch on sparse matrices), predicts with numpy
alone (`_sparse_matmul`, `_softmax`), and saves only the weight rows of buckets seen in training.
`scores_from_proba` turns class probabilities into one score in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from herd.data.quality.features import Featurizer
from herd.errors import DataError
from herd.fileio import atomic_file

Label = int | str


def _sparse_matmul(indices: np.ndarray, values: np.ndarray, offsets: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(n, K) = X @ table for X in CSR form, where `indices` already point into `table`'s rows."""
    n = len(offsets) - 1
    out = np.zeros((n, table.shape[1]), dtype=table.dtype)
    nonempty = offsets[1:] > offsets[:-1]
    if nonempty.any():
        # reduceat over the starts of non-empty rows: each segment then ends where the next non-empty row begins.
        out[nonempty] = np.add.reduceat(table[indices] * values[:, None], offsets[:-1][nonempty], axis=0)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


_FORMAT = "herd.quality.TextClassifier"
_FORMAT_VERSION = 1


class TextClassifier:
    """fastText-style text classifier: hashed n-gram features -> multinomial logistic regression.

    Training minimizes mean cross-entropy + l2/2 * |W|^2 (optionally with class weights) with full-batch L-BFGS from
    zeros: no sampling and a fixed summation order, so the same data give bit-identical weights for a given torch
    thread count (1 vs 2 threads differ in the last bit), and with l2 > 0 the objective is strictly convex, so the
    optimum does not depend on the optimizer's path. Only buckets that occur in the training set can get non-zero
    weights, so training works on those rows and the saved file stores only them.
    """

    def __init__(
        self,
        *,
        num_buckets: int = 1 << 18,
        word_ngrams: int = 2,
        char_ngrams: tuple[int, ...] = (),
        max_chars: int = 20_000,
        l2: float = 1e-4,
        max_iter: int = 200,
        class_weight: str | None = None,
    ) -> None:
        if l2 < 0 or max_iter < 1:
            raise DataError(f"need l2 >= 0 and max_iter >= 1, got l2={l2}, max_iter={max_iter}")
        if class_weight not in (None, "balanced"):
            raise DataError(f"class_weight must be None or 'balanced', got {class_weight!r}")
        self.featurizer = Featurizer(num_buckets, word_ngrams, tuple(char_ngrams), max_chars)
        self.l2, self.max_iter, self.class_weight = l2, max_iter, class_weight
        self.labels: list[Label] = []
        self._table: np.ndarray | None = None  # (num_buckets, K) float32
        self._bias: np.ndarray | None = None  # (K,) float32

    # -- training ----------------------------------------------------------------------------------------------------

    def fit(self, texts: Sequence[str], labels: Sequence[Label]) -> TextClassifier:
        if len(texts) != len(labels):
            raise DataError(f"fit got {len(texts)} texts but {len(labels)} labels")
        labels = [int(v) if isinstance(v, np.integer) else v for v in labels]
        if not all(isinstance(y, int | str) and not isinstance(y, bool) for y in labels):
            raise DataError("labels must be ints or strings")
        if len({type(y) for y in labels}) > 1:
            raise DataError("labels mix ints and strings; use one type")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"fit needs at least two distinct labels, got {classes}")
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[v] for v in labels], dtype=np.int64)
        indices, values, offsets = self.featurizer.batch(texts)
        W, b, used = _fit_logistic(indices, values, offsets, y, len(classes), self.l2, self.max_iter, self._weights(y))
        self.labels = list(classes)
        self._table = np.zeros((self.featurizer.num_buckets, len(classes)), dtype=np.float32)
        self._table[used] = W
        self._bias = b
        return self

    def _weights(self, y: np.ndarray) -> np.ndarray:
        if self.class_weight is None:
            return np.ones(len(y))
        counts = np.bincount(y)
        return (len(y) / (len(counts) * counts))[y]

    # -- prediction --------------------------------------------------------------------------------------------------

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), len(self.labels)) class probabilities, columns in the order of `self.labels`."""
        if self._table is None or self._bias is None:
            raise DataError("TextClassifier is not trained: call fit() or load() first")
        indices, values, offsets = self.featurizer.batch(texts)
        logits = _sparse_matmul(indices, values, offsets, self._table) + self._bias
        return _softmax(logits.astype(np.float64))

    def predict(self, texts: Sequence[str]) -> list[Label]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    # -- files -------------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One .npz file, written atomically: the non-zero weight rows, the bias and a JSON header."""
        if self._table is None or self._bias is None:
            raise DataError(f"{path}: cannot save an untrained TextClassifier")
        f = self.featurizer
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "labels": self.labels,
                "num_buckets": f.num_buckets, "word_ngrams": f.word_ngrams, "char_ngrams": list(f.char_ngrams),
                "max_chars": f.max_chars, "l2": self.l2, "max_iter": self.max_iter,
                "class_weight": self.class_weight}  # fmt: skip
        rows = np.flatnonzero(np.any(self._table != 0, axis=1))
        with atomic_file(path, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), rows=rows, weights=self._table[rows], bias=self._bias)

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                rows, weights, bias = z["rows"], z["weights"], z["bias"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a readable TextClassifier file ({type(e).__name__}: {e})") from None
        if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
            raise DataError(f"{path}: format {meta.get('format')!r} v{meta.get('version')}, expected {_FORMAT} v1")
        clf = cls(num_buckets=meta["num_buckets"], word_ngrams=meta["word_ngrams"],
                  char_ngrams=tuple(meta["char_ngrams"]), max_chars=meta["max_chars"], l2=meta["l2"],
                  max_iter=meta["max_iter"], class_weight=meta["class_weight"])  # fmt: skip
        k = len(meta["labels"])
        in_range = len(rows) == 0 or rows.max() < clf.featurizer.num_buckets
        if weights.shape != (len(rows), k) or bias.shape != (k,) or not in_range:
            raise DataError(f"{path}: weight shapes {weights.shape}/{bias.shape} do not match {k} labels")
        clf.labels = list(meta["labels"])
        clf._table = np.zeros((clf.featurizer.num_buckets, k), dtype=np.float32)
        clf._table[rows] = weights
        clf._bias = bias.astype(np.float32)
        return clf


def _fit_logistic(
    indices: np.ndarray,
    values: np.ndarray,
    offsets: np.ndarray,
    y: np.ndarray,
    k: int,
    l2: float,
    max_iter: int,
    sample_weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimize the regularized multinomial log-loss; return (W rows for `used` buckets, bias, used bucket ids).

    float64 throughout. X and X^T are CSR matrices over the used buckets, so the forward pass and the gradient are
    two sparse-dense products (10-20x faster than numpy gathers), each output row summed in a fixed order.
    """
    import warnings

    import torch

    n = len(y)
    used, local = np.unique(indices, return_inverse=True)
    U = len(used)
    rows = np.repeat(np.arange(n), np.diff(offsets))
    order = np.argsort(local, kind="stable")  # nonzeros grouped by bucket: the CSR form of X^T
    t_offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(local, minlength=U), out=t_offsets[1:])
    vals = torch.from_numpy(values.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"; the products used are stable
        X = torch.sparse_csr_tensor(torch.from_numpy(offsets), torch.from_numpy(local), vals, size=(n, U))
        XT = torch.sparse_csr_tensor(
            torch.from_numpy(t_offsets), torch.from_numpy(rows[order]), vals[order], size=(U, n)
        )
    weight = torch.from_numpy(sample_weight / sample_weight.sum())[:, None]
    target = torch.zeros(n, k, dtype=torch.float64)
    target[torch.arange(n), torch.from_numpy(y)] = 1.0

    theta = torch.zeros(U * k + k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )  # fmt: skip

    @torch.no_grad()
    def closure() -> torch.Tensor:
        W, b = theta[: U * k].view(U, k), theta[U * k :]
        logp = (X @ W + b).log_softmax(dim=1)
        loss = -(weight * target * logp).sum() + 0.5 * l2 * (W * W).sum()
        G = (logp.exp() - target) * weight  # d loss / d logits
        theta.grad = torch.cat([(XT @ G + l2 * W).reshape(-1), G.sum(dim=0)])
        return loss

    optimizer.step(closure)
    final = theta.detach().numpy()
    return final[: U * k].reshape(U, k).astype(np.float32), final[U * k :].astype(np.float32), used


def scores_from_proba(proba: np.ndarray, labels: Sequence[Label], positive_label: Label | None = None) -> np.ndarray:
    """One score in [0, 1] per row: P(positive_label), or with numeric labels and no positive label the expected
    label rescaled to [0, 1] (for labels {0, 1} that is P(1); for 0..3 judge scores, E[score] / 3)."""
    if positive_label is not None:
        if positive_label not in labels:
            raise DataError(f"positive_label {positive_label!r} is not one of the classifier's labels {list(labels)}")
        return proba[:, list(labels).index(positive_label)]
    if not all(isinstance(v, int) for v in labels):
        raise DataError(f"labels {list(labels)} are not numbers: set positive_label to the high-quality label")
    values = np.array(labels, dtype=np.float64)
    return (proba @ values - values.min()) / (values.max() - values.min())
