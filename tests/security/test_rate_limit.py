"""Finding 4 (first layer): no rate limiting anywhere. Now a token bucket per requester on writes
and executions answers 429 with Retry-After in the error envelope; the gateway's method
throttling in template.yaml carries the same limits; 429 is documented in every spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bhiv.auth import load_requesters
from bhiv.executor.delivery import BucketClient
from tests.conftest import MotoEnv
from tests.fake_bucket import FakeBucket
from tests.security.conftest import Api, clear_services, envelope, task_workflow, write_event

ROOT = Path(__file__).resolve().parents[2]
BURST = 3


@pytest.fixture
def tight_limits(all_functions_env: MotoEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged requesters with a burst of 3 and (practically) no refill during a test."""
    doc = yaml.safe_load((ROOT / "src" / "bhiv" / "requesters.yaml").read_text(encoding="utf-8"))
    doc["rate_limits"] = {"default": {"per_second": 0.01, "burst": BURST}}
    for spec in doc["requesters"].values():
        spec.pop("rate_limit", None)
    path = tmp_path / "requesters.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    monkeypatch.setenv("BHIV_REQUESTERS_FILE", str(path))
    monkeypatch.delenv("BHIV_RATE_LIMITS", raising=False)
    clear_services()


def _assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.body
    error = envelope(response)["error"]
    assert error["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1 and error["retry_after_seconds"] == retry_after


def test_writes_past_the_burst_get_429_with_retry_after(tight_limits: None, bucket: Api) -> None:
    statuses = [
        bucket.request("POST", "/core/write-event", body=write_event({"event_type": "probe", "n": i})).status_code
        for i in range(BURST)
    ]
    assert statuses == [200] * BURST
    _assert_throttled(bucket.request("POST", "/core/write-event", body=write_event({"event_type": "probe"})))
    # the refused write changed nothing; reads are not limited
    listing = bucket.request("GET", "/core/events", as_="bhiv_reader")
    assert listing.status_code == 200 and json.loads(listing.body)["count"] == BURST


def test_one_requester_flooding_does_not_throttle_another(tight_limits: None, bucket: Api) -> None:
    for i in range(BURST + 2):
        bucket.request("POST", "/core/write-event", body=write_event({"event_type": "probe", "n": i}))
    other = write_event({"event_type": "probe"}, requester="unified_action_orchestrator")
    assert bucket.request("POST", "/core/write-event", as_="unified_action_orchestrator", body=other).status_code == 200


def test_a_batch_costs_one_token_per_event(tight_limits: None, bucket: Api) -> None:
    batch = {"requester_id": "bhiv_core", "events": [{"event_data": {"event_type": "probe"}}] * (BURST + 1)}
    _assert_throttled(bucket.request("POST", "/core/write-events", body=batch))


def test_executions_and_karma_events_are_limited_too(tight_limits: None, executor: Api, karma: Api) -> None:
    for i in range(BURST):
        assert executor.request("POST", "/api/workflow/execute", body=task_workflow(f"rl-{i}")).status_code == 200
    _assert_throttled(executor.request("POST", "/api/workflow/execute", body=task_workflow("rl-over")))
    life = {"type": "life_event", "data": {"user_id": "u-1", "action": "helping_peers", "role": "learner"}}
    for _ in range(BURST):
        assert karma.request("POST", "/v1/event", body=life).status_code < 300
    _assert_throttled(karma.request("POST", "/v1/event", body=life))


def test_bucket_limiting_the_executor_leaves_its_event_in_the_outbox(fake_bucket: FakeBucket) -> None:
    """A 429 is not a verdict on the event: the Executor must retry it later, not drop it."""
    fake_bucket.mode = "throttle"
    try:
        outcome = BucketClient(fake_bucket.url, "tok").post_event("wf_1", {"event_type": "probe"})
    finally:
        fake_bucket.mode = "ok"
    assert (outcome.state, outcome.status) == ("unreachable", 429)


def test_token_bucket_refills_at_its_rate() -> None:
    from bhiv.errors import TooManyRequests
    from bhiv.ratelimit import Limit, RateLimiter

    now = [0.0]
    limiter = RateLimiter({"a": Limit(2.0, 2)}, None, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a")
    assert refused.value.headers == {"Retry-After": "1"}
    now[0] = 0.5  # one token back
    limiter.take("a")
    limiter.take("unlisted")  # no default limit: unlimited


def test_every_requester_is_limited_by_default() -> None:
    from bhiv.ratelimit import Limit

    doc = yaml.safe_load((ROOT / "src" / "bhiv" / "requesters.yaml").read_text(encoding="utf-8"))
    default = Limit.parse(doc["rate_limits"]["default"], "default")
    assert default is not None
    for requester, spec in doc["requesters"].items():
        limit = Limit.parse(spec.get("rate_limit", doc["rate_limits"]["default"]), requester)
        assert limit is not None and limit.burst >= 100, f"{requester}: a full batch (100 events) must fit the burst"


# --- the same limits at the edge, and in every spec ----------------------------------------------

WRITE_METHODS = {  # API resource -> {path: scope}
    "BucketApi": {"/core/write-event": "events:write", "/core/write-events": "events:write"},
    "KarmaApi": {"/v1/event": "karma:write"},
    "ExecutorApi": {"/api/workflow/execute": "workflows:execute"},
}
SPECS = {"BucketApi": "bucket", "KarmaApi": "karma", "ExecutorApi": "executor"}


def _summed_limits(scope: str) -> tuple[float, int]:
    from bhiv.ratelimit import Limit

    doc = yaml.safe_load((ROOT / "src" / "bhiv" / "requesters.yaml").read_text(encoding="utf-8"))
    rate, burst = 0.0, 0
    for requester, scopes in load_requesters(str(ROOT / "src" / "bhiv" / "requesters.yaml")).items():
        if scope in scopes:
            limit = Limit.parse(doc["requesters"][requester].get("rate_limit", doc["rate_limits"]["default"]), "x")
            assert limit is not None
            rate, burst = rate + limit.per_second, burst + limit.burst
    return rate, burst


@pytest.mark.parametrize("api", sorted(WRITE_METHODS))
def test_429_is_documented_in_every_spec(api: str) -> None:
    spec = yaml.safe_load((ROOT / "openapi" / f"{SPECS[api]}.yaml").read_text(encoding="utf-8"))
    assert "Retry-After" in spec["components"]["responses"]["TooManyRequests"]["headers"]
    for path in WRITE_METHODS[api]:
        assert "429" in spec["paths"][path]["post"]["responses"], f"{SPECS[api]}.yaml: POST {path} lacks 429"
