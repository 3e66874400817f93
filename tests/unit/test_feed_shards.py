"""The events feed's shard configuration: one number, the same in the cloud, locally and in the code."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bhiv.local.template import load_template
from bhiv.storage import events

ROOT = Path(__file__).resolve().parents[2]


def test_the_template_and_the_code_agree_on_the_number_of_shards() -> None:
    """The local stack and the CLI use the code's default; every function in the cloud gets the stack's."""
    template = load_template(str(ROOT / "template.yaml"))
    assert template["Parameters"]["EventsFeedShards"]["Default"] == events.DEFAULT_FEED_SHARDS
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[events.FEED_SHARDS_ENV] == {"Ref": "EventsFeedShards"}
    assert template["Parameters"]["EventsFeedShards"]["MaxValue"] == events.MAX_FEED_SHARDS


def test_configuration_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(events.FEED_SHARDS_ENV, raising=False)
    assert events.feed_shards() == events.DEFAULT_FEED_SHARDS
    monkeypatch.setenv(events.FEED_SHARDS_ENV, "8")
    assert events.feed_shards() == 8
    for bad in ("0", "65", "many"):
        with pytest.raises(ValueError):
            events.feed_shards(bad)


def test_an_event_keeps_its_shard_and_shards_share_the_writes() -> None:
    assert events.feed_key(0) == "all"  # the single feed of old is shard 0: its events stay listed
    ids = [f"evt_{i:08x}" for i in range(4000)]
    assert [events.shard_of(i, 8) for i in ids] == [events.shard_of(i, 8) for i in ids]
    spread = Counter(events.shard_of(i, 8) for i in ids)
    assert set(spread) == set(range(8))
    assert max(spread.values()) < 2 * min(spread.values())
