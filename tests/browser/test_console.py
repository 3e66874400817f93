"""The web console in a real browser: headless Chromium (the operating system's package) driven by
Playwright, against one live `bhiv up` for the whole module. Screenshots of each view go to build/.

Skipped (loudly, by `make test`) when no Chromium is installed; `.ci/run` installs it.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.stack import ROOT, RunningStack, poll_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "build"
WAIT_MS = 15_000

if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
def stack(demo_stack: RunningStack) -> RunningStack:
    return demo_stack  # tests/conftest.py: one `bhiv up --demo` for this module and its sibling


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = sync_api.sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def _screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


def _write(stack: RunningStack, event_data: dict[str, Any]) -> str:
    response = requests.post(
        f"{stack.bucket_url}/core/write-event",
        headers=stack.auth("bhiv_core"),
        json={"requester_id": "bhiv_core", "event_data": event_data},
        timeout=5,
    )
    assert response.status_code in (200, 201) and response.json()["success"], response.text  # stored
    event_id: str = response.json()["event_id"]
    return event_id


def _execute(stack: RunningStack, trace_id: str, user_id: str) -> None:
    response = requests.post(
        f"{stack.executor_url}/api/workflow/execute",
        headers=stack.auth("bhiv_core"),
        json={
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {
                "workflow_type": "workflow",
                "payload": {"action_type": "task", "user_id": user_id, "title": "console test"},
            },
        },
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["status"] == "success", response.text


def test_pipeline_view_shows_the_three_services_and_both_stream_mappings(stack: RunningStack, page: Any) -> None:
    page.goto(f"{stack.console_url}/#pipeline")
    for node in ("executor", "bucket", "karma"):
        sync_api.expect(page.locator(f"[data-node={node}] .badge")).to_have_text("up")
    for mapping in ("KarmaStreamFunction", "BucketStatsFunction"):
        box = page.locator(f"[data-node={mapping}]")
        sync_api.expect(box).to_contain_text("stream lag")
        sync_api.expect(box).to_contain_text("DLQ depth")
    sync_api.expect(page.locator("[data-node=executor]")).to_contain_text("outbox depth")
    sync_api.expect(page.locator("#live")).to_have_text("live")
    received = page.locator("[data-node=bucket] dd[data-metric='events received']")
    before = int(received.inner_text())
    _write(stack, {"event_type": "console_test", "trace_id": f"console-pipe-{uuid.uuid4().hex[:8]}"})
    sync_api.expect(received).not_to_have_text(str(before))  # the counter moves without a reload
    html = page.content()
    assert "Bearer" not in html and stack.tokens["bhiv_reader"] not in html  # the token stays server-side
    _screenshot(page, "pipeline")


def test_events_view_shows_a_new_event_live_and_filters_by_trace(stack: RunningStack, page: Any) -> None:
    page.goto(f"{stack.console_url}/#events")
    page.wait_for_selector("#events-table tbody tr")
    sync_api.expect(page.locator("#live")).to_have_text("live")
    trace = f"console-live-{uuid.uuid4().hex[:8]}"
    event_id = _write(stack, {"event_type": "console_test", "trace_id": trace, "note": "hello"})
    row = page.locator(f"#events-table tr[data-event-id='{event_id}']")
    sync_api.expect(row).to_be_visible()  # no reload: the live feed brought it
    sync_api.expect(row).to_have_class(re.compile(r"\bnew\b"))
    sync_api.expect(row).to_contain_text("console_test")
    sync_api.expect(row).to_contain_text(trace)
    _write(stack, {"event_type": "console_test", "trace_id": f"{trace}-other"})
    _screenshot(page, "events")
    page.fill("#event-filters input[name=trace_id]", trace)
    page.click("#event-filters button[type=submit]")
    sync_api.expect(page.locator("#events-table tbody tr")).to_have_count(1)
    sync_api.expect(page.locator("#events-table tbody tr").first).to_have_attribute("data-event-id", event_id)
    _screenshot(page, "events-filtered")


def test_trace_view_shows_every_hop_of_a_workflow_on_a_timeline(stack: RunningStack, page: Any) -> None:
    trace, user = f"console-wf-{uuid.uuid4().hex[:8]}", f"cu-{uuid.uuid4().hex[:6]}"
    _execute(stack, trace, user)
    page.goto(f"{stack.console_url}/#trace/{trace}")
    sync_api.expect(page.locator(".hop[data-hop=karma]")).to_have_attribute("data-state", "ok")
    hops = page.locator(".hop")
    assert hops.evaluate_all("els => els.map(e => e.dataset.hop)") == ["execute", "outbox", "bucket", "stream", "karma"]
    assert set(hops.evaluate_all("els => els.map(e => e.dataset.state)")) == {"ok"}
    sync_api.expect(page.locator(".hop[data-hop=karma]")).to_contain_text("workflow_success")
    sync_api.expect(page.locator(".hop[data-hop=outbox]")).to_contain_text("delivered")
    sync_api.expect(page.locator(".hop[data-hop=execute] summary")).to_contain_text("log line")
    assert page.locator(".hop[data-hop=execute] .took").inner_text().endswith("ms")
    _screenshot(page, "trace")


def test_karma_heatmap_marks_the_cell_an_event_changed_and_shows_the_user(stack: RunningStack, page: Any) -> None:
    page.goto(f"{stack.console_url}/#karma")
    cell = page.locator("td[data-role=learner][data-action=helping_peers]")
    sync_api.expect(cell).to_be_visible()
    before = cell.get_attribute("data-value")
    user = f"hk-{uuid.uuid4().hex[:6]}"
    _write(stack, {"event_type": "life_event", "user_id": user, "action": "helping_peers", "role": "learner"})
    sync_api.expect(cell).not_to_have_attribute("data-value", before or "")
    sync_api.expect(cell).to_have_class(re.compile(r"\bchanged\b"))
    sync_api.expect(page.locator("#top-users")).to_contain_text(user)
    page.click(f"#top-users tr[data-user='{user}'] a")
    card = page.locator(f"[data-user-card='{user}']")
    sync_api.expect(card).to_contain_text("SevaPoints 10")
    sync_api.expect(card).to_contain_text("helping_peers")
    _screenshot(page, "karma")


def test_stuck_view_lists_a_dead_lettered_event_with_its_reason(stack: RunningStack, page: Any) -> None:
    trace = f"console-poison-{uuid.uuid4().hex[:8]}"
    poison = _write(
        stack,
        {"event_type": "life_event", "user_id": "poisoned", "action": "teleport", "role": "learner", "trace_id": trace},
    )
    poll_until(
        lambda: requests.get(f"{stack.console_url}/api/stuck", timeout=10).json(),
        lambda body: any(e["event_id"] == poison for m in body["dlq"] for e in m["events"]),
        timeout=20,
        interval=0.2,
    )
    page.goto(f"{stack.console_url}/#stuck")
    entry = page.locator(f"#dlq-table tr:has([data-event-id='{poison}'])")
    sync_api.expect(entry).to_contain_text("teleport")  # the consumer's reason, not just "retries exhausted"
    sync_api.expect(entry).to_contain_text("KarmaDLQ")
    _screenshot(page, "stuck")
    page.click(f"#dlq-table [data-event-id='{poison}'] a")
    sync_api.expect(page.locator(".hop[data-hop=stream]")).to_have_attribute("data-state", "failed")
    sync_api.expect(page.locator("#trace-result")).to_contain_text("FAILED at hop 'stream'")
    _screenshot(page, "trace-failed")


def test_console_is_read_only_and_loopback_only(stack: RunningStack) -> None:
    assert requests.post(f"{stack.console_url}/api/events", timeout=5).status_code == 405
    foreign = requests.get(f"{stack.console_url}/api/pipeline", headers={"Host": "evil.example:80"}, timeout=5)
    assert foreign.status_code == 403
    assert requests.get(f"{stack.console_url}/static/../../stack.py", timeout=5).status_code == 404
