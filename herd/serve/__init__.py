"""`herd serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over herd's decode model.

- app.py: the endpoints, errors, auth, streaming (`create_app`, `ServeOptions`);
- schemas.py: the OpenAI request models;
- chat.py: messages and tools -> prompt, model text -> content or tool calls;
- metrics.py: Prometheus metrics.

Continuous batching is `herd.inference.scheduler`; forced tool calls and JSON mode decode under
`herd.inference.constrain`.
"""

from herd.serve.app import APIError, ServeOptions, create_app

__all__ = ["APIError", "ServeOptions", "create_app"]
