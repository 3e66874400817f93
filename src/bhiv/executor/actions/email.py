"""`email`: send a plain-text email through Amazon SES from the sender in env EMAIL_SENDER.

In the cloud the sender identity is provisioned (verified) outside this code. In the local stack
(env BHIV_LOCAL=1) moto, like SES, refuses an unverified sender, so the adapter verifies the
sender itself the first time it finds it missing from `list_identities`.

Delivery is at least once: SES has no idempotency key, so a retry after an attempt whose answer
was lost (a read timeout) may send a second copy. Rejections (MessageRejected, bad address,
access denied) are final; throttling, 5xx and connection errors are retried.

Fields: `recipient` (an email address), `subject` (one line, 1..998 characters), `body`
(1..100,000 characters). Output: `{"message_id"}`.
"""

from __future__ import annotations

import os
import re
from email.utils import parseaddr
from typing import Any, ClassVar

from bhiv.executor.actions._common import aws_call, check_text, setting
from bhiv.executor.actions.base import ActionContext, FieldProblem
from bhiv.storage import aws

MAX_SUBJECT = 998  # RFC 5322 line length
MAX_BODY = 100_000

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    rf"@(?P<domain>{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}})"
)


def is_email(value: str) -> bool:
    match = _EMAIL.fullmatch(value)
    return match is not None and len(value) <= 254 and len(match.group("local")) <= 64


class EmailAction:
    name: ClassVar[str] = "email"
    required: ClassVar[tuple[str, ...]] = ("recipient", "subject", "body")

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        recipient = check_text(fields, "recipient", problems, max_len=254)
        if recipient is not None and not is_email(recipient):
            problems.append(FieldProblem("recipient", "must be an email address like name@example.com"))
        check_text(fields, "subject", problems, max_len=MAX_SUBJECT, single_line=True)
        check_text(fields, "body", problems, max_len=MAX_BODY)
        return problems

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        sender = setting("EMAIL_SENDER")
        ses = aws.client("ses")
        if os.environ.get("BHIV_LOCAL") == "1":
            identity = parseaddr(sender)[1] or sender  # EMAIL_SENDER may be "Name <address>"
            with aws_call("SES VerifyEmailIdentity (local stack)"):
                if identity not in ses.list_identities(IdentityType="EmailAddress").get("Identities", []):
                    ses.verify_email_identity(EmailAddress=identity)
        with aws_call("SES SendEmail"):
            response = ses.send_email(
                Source=sender,
                Destination={"ToAddresses": [fields["recipient"]]},
                Message={
                    "Subject": {"Data": fields["subject"], "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": fields["body"], "Charset": "UTF-8"}},
                },
            )
        return {"message_id": str(response["MessageId"])}
