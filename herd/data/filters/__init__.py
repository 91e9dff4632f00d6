"""Document-level filters and transforms of the Llama 3 pretraining-data pipeline (paper section 3.1.1).

Steps, in the order a curation pipeline usually runs them (after `herd.data.extract.HtmlExtractor`), one module each:
- `UrlFilter` (url.py): block/allow lists of domains and banned URL substrings ("websites that are known to contain
  adult content" are removed; Llama 3, "PII and safety filtering").
- `LanguageId` (language.py): fastText lid.176 language tag on every document, optionally dropping languages or low
  scores (Llama 3, "Multilingual data": fastText language identification into 176 languages).
- `PiiScrubber` (pii.py): emails, phone numbers, IP addresses, card numbers and credentials become typed
  placeholders ("filters designed to remove data from websites [that] are likely to contain large amounts of
  personally identifiable information").
- `RepetitionFilter` (heuristics.py): Gopher's duplicated line / paragraph / n-gram rules (Rae et al., 2021, Table
  A1; Llama 3 uses "duplicated n-gram coverage ratio" to remove "lines that consist of repeated content such as
  logging or error messages").
- `QualityHeuristicsFilter` (heuristics.py): Gopher's quality rules plus optional C4 rules (Raffel et al., 2020).
- `DirtyWordFilter` (dirty_words.py): Llama 3's "dirty word counting" against adult websites not on the blocklist.
- `TokenDistributionFilter` (token_kl.py): Llama 3's "token-distribution Kullback-Leibler divergence to filter out
  documents containing excessive numbers of outlier tokens compared to the training corpus distribution".

Each is a datatrove step: `BaseFilter.filter(doc)` returns True to keep or `(False, reason)` to drop, counters go
through `stat_update`. Filters that judge prose exempt documents by `metadata["domain"]` (`skip_domains`) and
`metadata["language"]`, so a code or math pipeline can share them. Default lists live in `herd/data/lists/`
(common.py reads them).
"""

from herd.data.filters.common import LISTS_DIR, read_list
from herd.data.filters.dirty_words import DirtyWordFilter
from herd.data.filters.heuristics import GOPHER_STOP_WORDS, QualityHeuristicsFilter, RepetitionFilter
from herd.data.filters.language import LanguageId, default_lid_model_path
from herd.data.filters.pii import PII_PLACEHOLDERS, PiiScrubber, luhn_valid
from herd.data.filters.token_kl import REFERENCE_VERSION, TokenDistributionFilter, TokenReference, token_pieces
from herd.data.filters.url import UrlFilter, url_host

__all__ = [
    "GOPHER_STOP_WORDS",
    "LISTS_DIR",
    "PII_PLACEHOLDERS",
    "REFERENCE_VERSION",
    "DirtyWordFilter",
    "LanguageId",
    "PiiScrubber",
    "QualityHeuristicsFilter",
    "RepetitionFilter",
    "TokenDistributionFilter",
    "TokenReference",
    "UrlFilter",
    "default_lid_model_path",
    "luhn_valid",
    "read_list",
    "token_pieces",
    "url_host",
]
