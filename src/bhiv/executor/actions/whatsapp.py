"""`whatsapp`: send a short text message to a phone number, through Amazon SNS SMS.

Honest naming note: this is *not* WhatsApp. AWS has no WhatsApp API in boto3 that moto emulates,
so the adapter keeps the original system's action name and fields and delivers the message as an
SMS with SNS `Publish(PhoneNumber=..., Message=...)` (type Transactional). Swapping in a real
WhatsApp Business provider means replacing `run` here; the fields and output stay the same.

Because the transport is SNS SMS, a message is limited to what one SMS Publish accepts, 1,600
characters (WhatsApp itself allows 4,096): a longer message is refused by `validate` rather than
accepted and then failing at SNS.

Delivery is at least once: SNS has no idempotency key for SMS, so a retry after an attempt whose
answer was lost may send a second copy.

Fields: `recipient` (E.164, e.g. +919876543210), `message` (1..1,600 characters).
Output: `{"message_id"}`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from bhiv.executor.actions._common import aws_call, check_text
from bhiv.executor.actions.base import ActionContext, FieldProblem
from bhiv.storage import aws

E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # ASCII digits only (\d matches any script)
MAX_MESSAGE = 1600  # SNS: "The total size limit for a single SMS Publish action is 1,600 characters"


class WhatsAppAction:
    name: ClassVar[str] = "whatsapp"
    required: ClassVar[tuple[str, ...]] = ("recipient", "message")

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        recipient = check_text(fields, "recipient", problems)
        if recipient is not None and not E164.fullmatch(recipient):
            problems.append(
                FieldProblem(
                    "recipient",
                    "must be an E.164 phone number: '+', country code and number, 7 to 15 digits, e.g. +919876543210",
                )
            )
        check_text(fields, "message", problems, max_len=MAX_MESSAGE)
        return problems

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        with aws_call("SNS Publish (SMS)"):
            response = aws.client("sns").publish(
                PhoneNumber=fields["recipient"],
                Message=fields["message"],
                MessageAttributes={
                    "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
                },
            )
        return {"message_id": str(response["MessageId"])}
