"""`bhiv up` shows progress while a large state dir is restored (durability.progress_hook)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from bhiv.local import durability


def test_journal_replay_reports_progress(aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dynamodb, sqs = aws["dynamodb"], boto3.client("sqs")
    first = durability.DurableState(tmp_path, "us-east-1")
    first.restore(dynamodb, sqs)
    durability.activate(first)
    try:
        for n in range(5):
            dynamodb.put_item(TableName="KarmaTable", Item={"pk": {"S": f"user#p{n}"}, "sk": {"S": "state"}})
    finally:
        durability.activate(None)
        first.close()
    seen: list[str] = []
    monkeypatch.setattr(durability, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(durability, "progress_hook", seen.append)
    again = durability.DurableState(tmp_path, "us-east-1")
    again.restore(dynamodb, sqs)
    again.close()
    assert again.replayed == 5
    assert seen == ["replayed 2 journal writes", "replayed 4 journal writes"]
