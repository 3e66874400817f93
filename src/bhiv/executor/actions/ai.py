"""`ai`: answer a prompt through a pluggable backend, chosen by env AI_BACKEND.

* `deterministic-local` (the default, and the local stack's): *not* a language model. It returns a
  reproducible description of the prompt (its size, its first words and a sha256-based id), so
  workflows, tests and the local stack run offline with stable outputs.
* `bedrock`: Amazon Bedrock Runtime's `Converse` with the model `AI_MODEL_ID` (template.yaml's
  `AiBackend`/`AiModelId` stack parameters choose it per stage; the function may invoke that model
  only). One call per attempt (botocore's own retries are off) within `AI_TIMEOUT_S`; throttling,
  timeouts and 5xx are retryable failures, so the step's `retry` policy decides whether and when
  to try again; access, validation and unknown-model errors fail the step at once.

An unknown AI_BACKEND fails the step without retry (a configuration error).

Fields: `prompt` (1..8,000 characters), `model` (optional; `bedrock` accepts only its configured
model, the only one its role may invoke).
Output: `{"backend", "model", "response", "response_id", "prompt_sha256"}` (+ `stop_reason`, `usage`
from `bedrock`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bhiv.executor.actions._common import check_text, error_code, is_transient
from bhiv.executor.actions.base import ActionContext, ActionFailed, FieldProblem

MAX_PROMPT = 8000
MAX_MODEL = 200
DEFAULT_BACKEND = "deterministic-local"
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_TOKENS = 512
# Bedrock's own codes for "try again later", besides throttling and 5xx (_common.TRANSIENT_CODES).
BEDROCK_TRANSIENT_CODES = frozenset({"ModelTimeoutException", "ModelNotReadyException"})


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


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ActionFailed(f"{name} must be a number, got {raw!r}", retryable=False) from None
    if value <= 0:
        raise ActionFailed(f"{name} must be positive, got {raw!r}", retryable=False)
    return value


@lru_cache(maxsize=4)
def bedrock_client(timeout_s: float) -> Any:
    """bedrock-runtime with one attempt per call (the step's retry policy retries) and a read deadline.

    One per container and timeout: a client takes tens of milliseconds to build, and is thread-safe.
    """
    config = Config(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("bedrock-runtime", config=config)


class BedrockBackend:
    """Amazon Bedrock Runtime `Converse` with the configured model (AI_MODEL_ID)."""

    name = "bedrock"

    def __init__(self, client: Any | None = None, model_id: str | None = None, max_tokens: int | None = None) -> None:
        self._model_id = model_id or os.environ.get("AI_MODEL_ID") or ""
        if not self._model_id:
            raise ActionFailed(
                "AI_BACKEND 'bedrock' needs AI_MODEL_ID (the model its role may invoke)", retryable=False
            )
        self._max_tokens = max_tokens or int(_env_number("AI_MAX_TOKENS", DEFAULT_MAX_TOKENS))
        self._client = client if client is not None else bedrock_client(_env_number("AI_TIMEOUT_S", DEFAULT_TIMEOUT_S))

    def complete(self, prompt: str, model: str | None, context: ActionContext) -> dict[str, Any]:
        if model is not None and model != self._model_id:
            raise ActionFailed(
                f"model '{model}' is not the configured Bedrock model '{self._model_id}' (the only one allowed)",
                retryable=False,
            )
        try:
            answer = self._client.converse(
                modelId=self._model_id,
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": self._max_tokens},
            )
        except ClientError as exc:
            code = error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            retryable = code in BEDROCK_TRANSIENT_CODES or is_transient(exc)
            raise ActionFailed(f"Bedrock Converse failed: {code}: {message}", retryable=retryable) from exc
        except BotoCoreError as exc:  # timeouts and connection problems are transient, the rest is not
            raise ActionFailed(
                f"Bedrock Converse failed: {type(exc).__name__}: {exc}", retryable=is_transient(exc)
            ) from exc
        content = ((answer.get("output") or {}).get("message") or {}).get("content") or []
        texts = [block["text"] for block in content if isinstance(block, dict) and isinstance(block.get("text"), str)]
        if not texts:
            raise ActionFailed("Bedrock Converse answered without text", retryable=False)
        usage = answer.get("usage") or {}
        return {
            "model": self._model_id,
            "response": "".join(texts),
            "response_id": str((answer.get("ResponseMetadata") or {}).get("RequestId") or ""),
            "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            "stop_reason": answer.get("stopReason"),
            "usage": {key: usage[key] for key in ("inputTokens", "outputTokens", "totalTokens") if key in usage},
        }


BACKENDS: dict[str, Callable[[], AiBackend]] = {
    DeterministicLocalBackend.name: DeterministicLocalBackend,
    BedrockBackend.name: BedrockBackend,
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
