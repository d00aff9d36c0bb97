"""Senders behind the ``MessageSender`` port: the live Cloud API client or a dry run."""

from __future__ import annotations

import logging
import uuid

from connector.contacts import redact_phone
from connector.messages import OutboundMessage, SendResult

log = logging.getLogger("storeloop.sender")


class DryRunSender:
    """With no access token the connector runs end to end and records what it would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, OutboundMessage]] = []

    async def send(self, phone_number_id: str, message: OutboundMessage) -> SendResult:
        self.sent.append((phone_number_id, message))
        what = message.name if message.kind == "template" else message.kind
        log.info("dry run: would send", extra={"to": redact_phone(message.to), "template": what})
        return SendResult(wamid=f"dryrun.{uuid.uuid4().hex}", wa_id=message.to.lstrip("+"), dry_run=True)
