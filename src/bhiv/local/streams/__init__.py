"""The local stream poller: a stand-in for Lambda's DynamoDB event source mapping.

moto's own event source mapping needs Docker to run a function and silently drops the records
without it, so the local stack polls the table's stream itself and behaves like the Lambda
service does for a mapping of template.yaml:

* reads every shard of the table's stream in order (a child shard only after its parent is
  drained) and hands the function batches of up to ``BatchSize`` records, waiting at most
  ``MaximumBatchingWindowInSeconds`` for a batch to fill;
* invokes the handler with exactly Lambda's event shape (``eventSourceARN``, ``awsRegion``, a
  numeric ``ApproximateCreationDateTime``, ...) and a Lambda-like context object;
* ``ReportBatchItemFailures``: everything before the lowest reported sequence number is
  checkpointed and the retry starts at that record; a malformed response fails the whole batch;
* ``BisectBatchOnFunctionError``: a batch whose invocation raises is split in half and the halves
  are retried in order (splitting uses no retry). When a batch reports a failed item, it is
  "bisected at the returned sequence number": the failed record is retried on its own and the
  records behind it go on without it, so only the failing record ever reaches the destination;
* ``MaximumRetryAttempts`` (-1: no limit) with a short backoff, ``MaximumRecordAgeInSeconds``
  (-1: no limit); when either runs out, the records go to the on-failure SQS queue and the poller
  checkpoints past them: a poison record never blocks the records behind it;
* checkpoints per (table, shard) in a JSON file, written atomically after every batch, so a
  restarted poller resumes after the last handled record (``AFTER_SEQUENCE_NUMBER``); the local
  stack keeps sequence numbers continuous across restarts, so positions stay valid.

Modules: ``lambda_shapes`` (record, context, reading the handler's answer), ``poller`` (the
mapping itself), ``checkpoints`` (positions on disk), ``destination`` (on-failure messages and
``bhiv dlq``).

The on-failure message has the fields Lambda sends (``requestContext``, ``responseContext``,
``DDBStreamBatchInfo``, ``timestamp``, ``version``) **plus** ``records``: the Lambda-shaped
records themselves. Lambda sends only the metadata (you would read the records back from the
stream within its 24 h retention); keeping them in the message is what lets ``bhiv dlq redrive``
re-deliver them with :func:`dlq_redrive`. ``responseContext.errorMessage`` is ours as well.

Differences from Lambda worth knowing: the function timeout is not enforced (a slow handler only
logs a warning), the 6 MB invocation payload limit is not checked, and a message bigger than
256 KiB is split into several on-failure messages.
"""

from bhiv.local.streams import checkpoints, destination, lambda_shapes, poller
from bhiv.local.streams.checkpoints import Checkpoints
from bhiv.local.streams.destination import dlq_messages, dlq_redrive, failure_messages
from bhiv.local.streams.lambda_shapes import Handler, LambdaContext, Outcome, invoke, lambda_record
from bhiv.local.streams.poller import StreamPoller

__all__ = [
    "Checkpoints",
    "Handler",
    "LambdaContext",
    "Outcome",
    "StreamPoller",
    "checkpoints",
    "destination",
    "dlq_messages",
    "dlq_redrive",
    "failure_messages",
    "invoke",
    "lambda_record",
    "lambda_shapes",
    "poller",
]
