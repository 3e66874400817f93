"""The `bedrock` AI backend, offline: Bedrock Runtime's Converse answered by botocore's Stubber.

moto's bedrock-runtime answers an empty body, so the real client is stubbed instead: the request
shape is checked against the service model, and each error is one Bedrock documents for Converse.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber

from bhiv.executor.actions.ai import AiAction, BedrockBackend
from bhiv.executor.actions.base import ActionContext, ActionFailed
from bhiv.executor.engine import run_plan
from bhiv.executor.plan import build_plan

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Lesson 5 covers "}, {"text": "fractions."}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
    "metrics": {"latencyMs": 321},
}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bedrock = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(bedrock) as stubber:
        yield bedrock, stubber
        stubber.assert_no_pending_responses()


def _request(prompt: str) -> dict[str, Any]:
    return {
        "modelId": MODEL,
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "inferenceConfig": {"maxTokens": 256},
    }


def _ctx(attempt: int = 1) -> ActionContext:
    return ActionContext("t-ai", "u-1", 0, attempt)


def test_converse_answers_the_prompt_with_the_configured_model(client: tuple[Any, Stubber]) -> None:
    bedrock, stubber = client
    stubber.add_response("converse", ANSWER, _request("Summarise lesson 5"))
    answer = BedrockBackend(bedrock, MODEL, 256).complete("Summarise lesson 5", None, _ctx())
    assert answer["response"] == "Lesson 5 covers fractions."
    assert answer["model"] == MODEL and answer["stop_reason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17}


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("ThrottlingException", 429, True),
        ("ModelTimeoutException", 408, True),
        ("ModelNotReadyException", 429, True),
        ("ServiceUnavailableException", 503, True),
        ("InternalServerException", 500, True),
        ("AccessDeniedException", 403, False),
        ("ValidationException", 400, False),
        ("ResourceNotFoundException", 404, False),
    ],
)
def test_errors_are_classified_for_the_steps_retry_policy(
    client: tuple[Any, Stubber], code: str, status: int, retryable: bool
) -> None:
    bedrock, stubber = client
    stubber.add_client_error("converse", code, "no", http_status_code=status, expected_params=_request("hi"))
    with pytest.raises(ActionFailed) as failed:
        BedrockBackend(bedrock, MODEL, 256).complete("hi", None, _ctx())
    assert failed.value.retryable is retryable
    assert code in str(failed.value)


def test_a_read_timeout_is_retryable(client: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch) -> None:
    bedrock, _stubber = client

    def timed_out(**_: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="https://bedrock-runtime.us-east-1.amazonaws.com/model/x/converse")

    monkeypatch.setattr(bedrock, "converse", timed_out)
    with pytest.raises(ActionFailed) as failed:
        BedrockBackend(bedrock, MODEL, 256).complete("hi", None, _ctx())
    assert failed.value.retryable is True


def test_only_the_configured_model_may_be_asked_for(client: tuple[Any, Stubber]) -> None:
    bedrock, _stubber = client
    with pytest.raises(ActionFailed) as failed:
        BedrockBackend(bedrock, MODEL, 256).complete("hi", "some.other-model", _ctx())
    assert failed.value.retryable is False  # its role could not invoke it anyway


def test_an_answer_without_text_fails_the_step(client: tuple[Any, Stubber]) -> None:
    bedrock, stubber = client
    stubber.add_response("converse", {**ANSWER, "output": {"message": {"role": "assistant", "content": []}}})
    with pytest.raises(ActionFailed) as failed:
        BedrockBackend(bedrock, MODEL, 256).complete("hi", None, _ctx())
    assert failed.value.retryable is False


def test_throttling_is_retried_by_the_steps_policy_then_succeeds(
    client: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two throttled attempts and a third that answers: the step succeeds on attempt 3, no sleeping."""
    bedrock, stubber = client
    for _ in range(2):
        stubber.add_client_error("converse", "ThrottlingException", "slow down", http_status_code=429)
    stubber.add_response("converse", ANSWER)
    monkeypatch.setenv("AI_BACKEND", "bedrock")
    action = AiAction(backends={"bedrock": lambda: BedrockBackend(bedrock, MODEL, 256)})
    body = {
        "trace_id": "t-ai",
        "decision": "workflow",
        "data": {
            "payload": {
                "user_id": "u-1",
                "steps": [
                    {
                        "action_type": "ai",
                        "prompt": "Summarise lesson 5",
                        "retry": {"max_attempts": 3, "interval_seconds": 2, "backoff_rate": 2},
                    }
                ],
            }
        },
    }
    waits: list[float] = []
    run = run_plan(build_plan(body, "t-ai", {"ai": action}), {"ai": action}, sleep=waits.append)
    assert run.status == "success"
    assert run.steps[0].attempts == 3 and run.steps[0].output is not None
    assert run.steps[0].output["backend"] == "bedrock"
    assert waits == [2, 4]


def test_access_denied_is_not_retried(client: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch) -> None:
    bedrock, stubber = client
    stubber.add_client_error("converse", "AccessDeniedException", "not this model", http_status_code=403)
    monkeypatch.setenv("AI_BACKEND", "bedrock")
    action = AiAction(backends={"bedrock": lambda: BedrockBackend(bedrock, MODEL, 256)})
    body = {"trace_id": "t", "decision": "workflow", "data": {"payload": {"action_type": "ai", "prompt": "hi"}}}
    run = run_plan(build_plan(body, "t", {"ai": action}), {"ai": action}, sleep=lambda _: None)
    assert run.status == "failed" and run.steps[0].attempts == 1


def test_bedrock_needs_a_model_and_stays_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_MODEL_ID", raising=False)
    with pytest.raises(ActionFailed) as failed:
        BedrockBackend(client=object())
    assert failed.value.retryable is False
    monkeypatch.delenv("AI_BACKEND", raising=False)
    assert AiAction().backend().name == "deterministic-local"
