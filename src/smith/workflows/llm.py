"""Optional, off by default: for a step Smith cannot run (a remote action it does not have), ask an LLM speaking
the Ollama HTTP API (``POST /api/generate``) for shell commands. The proposal is always shown in the job's log;
it is run only when enabled. No secret is sent: the step's inputs go through the masker first."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from smith.workflows.errors import WorkflowError

FENCE = re.compile(r"```(?:bash|sh|shell)?\s*\n(.*?)```", re.S)
PROMPT = """You replace a GitHub Actions step on a Linux machine (bash, no Docker, maybe no network).
The step is:
  uses: {uses}
  with: {inputs}
Answer with only the bash commands that do what this action does, in one ```bash block, no explanation."""


@dataclass(frozen=True)
class LLM:
    url: str
    model: str
    enabled: bool = False
    timeout: float = 120.0

    async def propose(self, uses: str, inputs: dict[str, str]) -> str:
        """The commands the model proposes for ``uses`` with ``inputs`` (already masked)."""
        shown = ", ".join(f"{k}: {v}" for k, v in inputs.items()) or "(none)"
        body = {"model": self.model, "prompt": PROMPT.format(uses=uses, inputs=shown), "stream": False}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.post(self.url.rstrip("/") + "/api/generate", json=body)
        except httpx.HTTPError as exc:
            raise WorkflowError(f"LLM endpoint {self.url} unreachable: {exc}") from exc
        if r.status_code != 200:
            try:
                why = str(r.json().get("error", r.text))
            except ValueError:
                why = r.text
            raise WorkflowError(f"LLM endpoint {self.url} answered {r.status_code}: {why[:200]}")
        try:
            text = str(r.json().get("response", ""))
        except ValueError as exc:
            raise WorkflowError(f"LLM endpoint {self.url} answered no JSON") from exc
        m = FENCE.search(text)
        commands = (m.group(1) if m else text).strip()
        if not commands:
            raise WorkflowError(f"the LLM ({self.model}) proposed nothing for {uses}")
        return commands
