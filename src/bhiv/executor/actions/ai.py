"""`ai`: answer a prompt through a pluggable backend, chosen by env AI_BACKEND.

The only backend shipped is `deterministic-local` (the default): it is *not* a language model.
It returns a reproducible description of the prompt (its size, its first words and a sha256-based
id), so workflows, tests and the local stack run offline with stable outputs. A real model is one
class implementing `AiBackend` plus one entry in `BACKENDS`; its transient failures should raise
ActionFailed(retryable=True).

An unknown AI_BACKEND fails the step without retry (a configuration error).

Fields: `prompt` (1..8,000 characters), `model` (optional, passed to the backend).
Output: `{"backend", "model", "response", "response_id", "prompt_sha256"}`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from bhiv.executor.actions._common import check_text
from bhiv.executor.actions.base import ActionContext, ActionFailed, FieldProblem

MAX_PROMPT = 8000
MAX_MODEL = 200
DEFAULT_BACKEND = "deterministic-local"


class AiBackend(Protocol):
    name: str

    def complete(self, prompt: str, model: str | None, context: ActionContext) -> dict[str, Any]:
        """Answer the prompt: at least {"response": str}; may add "model" and other JSON fields."""
        ...


class DeterministicLocalBackend:
    """Not a model: a reproducible summary of the prompt, for offline runs and tests."""

    name = DEFAULT_BACKEND

    def complete(self, prompt: str, model: str | None, context: ActionContext) -> dict[str, Any]:
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        words = re.findall(r"\S+", prompt)
        opening = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
        response = (
            f"[deterministic-local, not a model] Prompt of {len(words)} words and {len(prompt)} "
            f"characters, beginning: {opening!r}"
        )
        return {
            "model": model or "none",
            "response": response,
            "response_id": f"dl-{digest[:16]}",
            "prompt_sha256": digest,
        }


BACKENDS: dict[str, Callable[[], AiBackend]] = {
    DeterministicLocalBackend.name: DeterministicLocalBackend,
}


class AiAction:
    name: ClassVar[str] = "ai"
    required: ClassVar[tuple[str, ...]] = ("prompt",)

    def __init__(self, backends: Mapping[str, Callable[[], AiBackend]] | None = None) -> None:
        self._backends = BACKENDS if backends is None else backends

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        check_text(fields, "prompt", problems, max_len=MAX_PROMPT)
        model = check_text(fields, "model", problems, required=False, max_len=MAX_MODEL, single_line=True)
        if model is not None and not model.strip():
            problems.append(FieldProblem("model", "must not be empty when given"))
        return problems

    def backend(self) -> AiBackend:
        name = os.environ.get("AI_BACKEND") or DEFAULT_BACKEND
        factory = self._backends.get(name)
        if factory is None:
            raise ActionFailed(
                f"Unknown AI_BACKEND '{name}' (known: {', '.join(sorted(self._backends))})", retryable=False
            )
        return factory()

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        backend = self.backend()
        answer = backend.complete(fields["prompt"], fields.get("model"), context)
        if not isinstance(answer.get("response"), str):
            raise ActionFailed(f"AI backend '{backend.name}' returned no text response", retryable=False)
        return {"backend": backend.name, "model": fields.get("model"), **answer}
