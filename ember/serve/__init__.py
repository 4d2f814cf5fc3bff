"""ember's OpenAI-compatible server (needs the `serve` extra: fastapi, uvicorn,
prometheus_client).

    ember serve [MODEL] --port 8000                     # the command line
    ember.serve.serve("model-dir", port=8000)           # the same from Python
    app = ember.serve.create_app(async_llm, "name")     # an ASGI app to mount or run yourself

See docs/serve.md for the endpoints, the metrics and the error format.
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
