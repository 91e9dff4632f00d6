"""herd: the Llama 3 recipe, from raw text to a served model, as one small codebase."""

__version__ = "0.1.0"
