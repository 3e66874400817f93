"""The on-failure destination: the messages Lambda sends to SQS for records it gives up on, and
the tools that list and re-deliver them (`bhiv dlq list|redrive`)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from bhiv.local.streams import lambda_shapes
from bhiv.local.streams.lambda_shapes import Handler, Outcome, _iso, _seq, function_arn, invoke

MAX_MESSAGE_BYTES = 256 * 1024  # classic SQS limit; bigger on-failure messages are split


def failure_messages(
    records: list[dict[str, Any]],
    *,
    condition: str,
    function: str,
    stream_arn: str,
    shard_id: str,
    attempts: int,
    outcome: Outcome | None,
) -> list[dict[str, Any]]:
    """The on-failure destination messages for these records (more than one if they are large)."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for record in records:
        record_size = len(json.dumps(record, separators=(",", ":")))
        if chunks[-1] and size + record_size > MAX_MESSAGE_BYTES - 4096:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += record_size + 1
    messages = []
    for chunk in chunks:
        message: dict[str, Any] = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": function_arn(function, stream_arn),
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": outcome.function_error if outcome else None,
                "errorMessage": outcome.error if outcome else "",
            },
            "version": "1.0",
            "timestamp": _iso(lambda_shapes.wall_clock()),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": _seq(chunk[0]),
                "endSequenceNumber": _seq(chunk[-1]),
                "approximateArrivalOfFirstRecord": _iso(chunk[0]["dynamodb"]["ApproximateCreationDateTime"]),
                "approximateArrivalOfLastRecord": _iso(chunk[-1]["dynamodb"]["ApproximateCreationDateTime"]),
                "batchSize": len(chunk),
                "streamArn": stream_arn,
            },
            "records": chunk,
        }
        if len(json.dumps(message)) > MAX_MESSAGE_BYTES:  # one record alone is too big: metadata only
            message["records"] = []
            message["recordsOmitted"] = True
        messages.append(message)
    return messages


# --- the on-failure queue ---------------------------------------------------------------------


def _receive_all(sqs: Any, queue_url: str, max_messages: int, visibility_s: int) -> list[dict[str, Any]]:
    """Receive up to max_messages distinct messages, each hidden for visibility_s seconds."""
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < max_messages:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, max_messages - len(seen)),
            VisibilityTimeout=visibility_s,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
        )
        fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen[message["MessageId"]] = message
    return list(seen.values())


def _release(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    """Make messages visible again at once."""
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(chunk)
            ],
        )


def _body(message: dict[str, Any]) -> Any:
    try:
        return json.loads(message["Body"])
    except ValueError:
        return message["Body"]


def dlq_messages(sqs: Any, queue_url: str, max_messages: int = 100) -> list[dict[str, Any]]:
    """The on-failure queue's messages, left in the queue: [{message_id, sent_at, receive_count, body}]."""
    messages = _receive_all(sqs, queue_url, max_messages, visibility_s=30)
    try:
        result = []
        for message in messages:
            attributes = message.get("Attributes", {})
            sent = attributes.get("SentTimestamp")
            result.append(
                {
                    "message_id": message["MessageId"],
                    "sent_at": _iso(int(sent) / 1000) if sent else None,
                    "receive_count": int(attributes.get("ApproximateReceiveCount", 0)),
                    "body": _body(message),
                }
            )
        return result
    finally:
        _release(sqs, queue_url, messages)


def dlq_redrive(sqs: Any, queue_url: str, handler: Handler) -> tuple[int, int]:
    """Hand each message's records to the handler again; a message is deleted once the handler has
    taken all of its records. Returns (messages redriven, messages still failing). A message whose
    handler reports failed items keeps only the records from the first failed one on."""
    log = logging.getLogger("bhiv.local.streams")
    redriven = failing = 0
    keep: list[dict[str, Any]] = []
    try:
        for message in _receive_all(sqs, queue_url, max_messages=10_000, visibility_s=300):
            body = _body(message)
            records = body.get("records") if isinstance(body, dict) else None
            if not records:
                log.warning(f"on-failure message {message['MessageId']} carries no records; cannot redrive it")
                keep.append(message)
                failing += 1
                continue
            batch = body.get("DDBStreamBatchInfo", {})
            arn = str(batch.get("streamArn") or records[0].get("eventSourceARN", ""))
            function = str(body.get("requestContext", {}).get("functionArn", "function")).rsplit(":", 1)[-1]
            outcome = invoke(handler, records, function, arn)
            if outcome.ok:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                redriven += 1
                continue
            failing += 1
            log.warning(f"redrive of {message['MessageId']} failed: {outcome.error}")
            if outcome.failed_at:  # keep only what is still failing
                rest = records[outcome.failed_at :]
                body["records"] = rest
                batch.update({"startSequenceNumber": _seq(rest[0]), "batchSize": len(rest)})
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body, separators=(",", ":")))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                keep.append(message)
    finally:
        _release(sqs, queue_url, keep)
    return redriven, failing
