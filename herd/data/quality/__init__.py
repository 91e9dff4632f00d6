"""Model-based quality filtering and domain classification (Llama 3 paper, sections 3.1.1 and 3.1.2).

Llama 3 labels a sample of web documents with a larger model (Llama 2, asked whether each text meets a quality bar),
then trains a fast classifier (fastText-style) on those labels and runs it over the whole corpus; domain classifiers
built the same way pick the data mix. This package has the same parts, small enough to run on a laptop:
- `TextClassifier` (classifier.py, features from features.py): hashed word unigram+bigram (and optional character
  n-gram) counts -> multinomial logistic regression with L2, fitted by full-batch L-BFGS. Deterministic,
  numpy-only at prediction time, one .npz file.
- `LLMJudge` / `judge_quality` (judge.py): few-shot rubric prompt to a chat model (default: the embedded
  SmolLM2-135M-Instruct); the score is the expected value of the next-token distribution over the digits 0..3, not
  parsed from free text. Any callable `texts -> labels` can stand in for it (a bigger model, or heuristic labels).
  `load_judge` loads its model in bf16/fp32, or with int8/int4 weights for herd's decode kernels.
- `label_and_train_quality` (judge.py): judge a sample, train the classifier on it, report held-out agreement with
  the judge.
- `seed_domain_label` / `train_domain_classifier` (domain.py): heuristic seed labels (code by syntax, math by
  formula density, multilingual by the language tag or script), generalized by the classifier.
- Steps (steps.py): `QualityScorer` (metadata["quality_score"], optional drop "low_quality") and `DomainTagger`
  (metadata["domain"], metadata["domain_score"]).
"""

from herd.data.quality.classifier import Label, TextClassifier, scores_from_proba
from herd.data.quality.domain import DOMAINS, code_score, math_score, seed_domain_label, train_domain_classifier
from herd.data.quality.features import Featurizer
from herd.data.quality.judge import (
    CONTENT_FREE,
    QUALITY_EXAMPLES,
    QUALITY_RUBRIC,
    Judge,
    LLMJudge,
    QualityTrainingReport,
    judge_quality,
    label_and_train_quality,
    load_judge,
)
from herd.data.quality.steps import DomainTagger, QualityScorer

__all__ = [
    "CONTENT_FREE",
    "DOMAINS",
    "QUALITY_EXAMPLES",
    "QUALITY_RUBRIC",
    "DomainTagger",
    "Featurizer",
    "Judge",
    "LLMJudge",
    "Label",
    "QualityScorer",
    "QualityTrainingReport",
    "TextClassifier",
    "code_score",
    "judge_quality",
    "label_and_train_quality",
    "load_judge",
    "math_score",
    "scores_from_proba",
    "seed_domain_label",
    "train_domain_classifier",
]
