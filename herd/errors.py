"""One exception type per package. The CLI prints any `HerdError` as one line, without a traceback.

Messages name the file, field or value at fault and, where it helps, what to do about it.
"""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors that
    wrap what a third-party reader or a template raised."""
    return (str(e).splitlines() or [type(e).__name__])[0][:limit]


class HerdError(Exception):
    """Base of every error herd raises on purpose (bad input, missing file, unsupported format)."""


class StorageError(HerdError):
    """The disk refused a write (full, over quota, read-only, an I/O error). herd writes through temporary names, so
    what was written before is intact."""


class ModelError(HerdError):
    """Invalid model arguments or an unknown preset."""


class CheckpointError(HerdError):
    """A checkpoint that is missing, truncated, of an unknown format, or does not match the model."""


class TokenizerError(HerdError):
    """A tokenizer file or chat template that cannot be read or used."""


class InferenceError(HerdError):
    """Invalid generation settings or prompts."""


class DataError(HerdError):
    """Bad curation input or configuration: an unreadable file, a malformed record, an invalid setting."""


class TrainError(HerdError):
    """A training run that cannot start or cannot go on (bad config, data that does not fit, runaway faults)."""


class ToolError(HerdError):
    """A tool call that cannot run: an unknown tool, arguments that do not fit its schema, or a failed execution."""


class SafetyError(HerdError):
    """Bad guard or safety input (a dialog, a categories file, a guard's unparsable answer) or an unsafe setting."""


class EvalError(HerdError):
    """Bad eval data or settings: an eval file line, a result file, a judge that cannot be reached."""
