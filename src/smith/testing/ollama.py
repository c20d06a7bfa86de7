"""A fake Ollama server: ``POST /api/generate`` as Ollama answers it with ``"stream": false``.

Like the real one it refuses a request without ``model`` (400, ``{"error": "model is required"}``) and a model
it does not have (404, ``{"error": "model 'x' not found, try pulling it first"}``); it records the prompts.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(models: dict[str, str]) -> tuple[FastAPI, list[dict[str, Any]]]:
    """``models``: model name -> the text it answers with. Returns the app and the list of requests it got."""
    app = FastAPI()
    seen: list[dict[str, Any]] = []

    @app.post("/api/generate")
    async def generate(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        model = body.get("model")
        if not model:
            return JSONResponse({"error": "model is required"}, status_code=400)
        if model not in models:
            return JSONResponse({"error": f"model '{model}' not found, try pulling it first"}, status_code=404)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        return JSONResponse(
            {"model": model, "created_at": now, "response": models[model], "done": True, "done_reason": "stop"}
        )

    return app, seen
