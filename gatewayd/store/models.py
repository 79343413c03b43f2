"""The database tables of gatewayd (tortoise-orm). Changes go through `store.tickets`, not here.

After changing a model run `python -m gatewayd.store.makemigrations` and commit the new migration.
No `;` in model docstrings or field descriptions: they become SQL comments, and tortoise's SQLite
migrations split statements on every `;` (tests/test_store.py checks this).
"""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model

APP = "gatewayd"


class Contact(Model):
    id = fields.IntField(primary_key=True)
    number = fields.CharField(max_length=64, null=True, unique=True)
    first_name = fields.CharField(max_length=255, default="")
    last_name = fields.CharField(max_length=255, default="")
    company = fields.CharField(max_length=255, null=True)
    language = fields.CharField(max_length=16, null=True)
    email_private = fields.CharField(max_length=320, null=True, db_index=True)
    email_business = fields.CharField(max_length=320, null=True, db_index=True)
    email_paypal = fields.CharField(max_length=320, null=True, db_index=True)
    active = fields.BooleanField(default=True)
    registered_at = fields.DatetimeField(null=True)
    anonymized_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    addresses: fields.ReverseRelation[ContactAddress]

    class Meta:
        table = "contact"


class ContactAddress(Model):
    id = fields.IntField(primary_key=True)
    contact: fields.ForeignKeyRelation[Contact] = fields.ForeignKeyField(
        f"{APP}.Contact", related_name="addresses", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=16)  # billing | delivery
    primary = fields.BooleanField(default=False)
    email = fields.CharField(max_length=320, null=True, db_index=True)
    name = fields.CharField(max_length=255, null=True)
    company = fields.CharField(max_length=255, null=True)
    street = fields.CharField(max_length=255, null=True)
    postal_code = fields.CharField(max_length=32, null=True)
    city = fields.CharField(max_length=255, null=True)
    country = fields.CharField(max_length=64, null=True)
    phone = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "contact_address"
        indexes = (("contact_id",),)


class Order(Model):
    id = fields.IntField(primary_key=True)
    contact: fields.ForeignKeyNullableRelation[Contact] = fields.ForeignKeyField(
        f"{APP}.Contact", related_name="orders", null=True, on_delete=fields.SET_NULL
    )
    invoice_number = fields.CharField(max_length=64, null=True, db_index=True)
    billing_email = fields.CharField(max_length=320, null=True)
    delivery_email = fields.CharField(max_length=320, null=True)
    language = fields.CharField(max_length=16, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "shop_order"
        indexes = (("contact_id",),)


class Ticket(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=500)
    type = fields.CharField(max_length=128)
    status = fields.CharField(max_length=128)
    priority = fields.SmallIntField(default=3)
    contact: fields.ForeignKeyNullableRelation[Contact] = fields.ForeignKeyField(
        f"{APP}.Contact", related_name="tickets", null=True, on_delete=fields.SET_NULL
    )
    order: fields.ForeignKeyNullableRelation[Order] = fields.ForeignKeyField(
        f"{APP}.Order", related_name="tickets", null=True, on_delete=fields.SET_NULL
    )
    account = fields.CharField(max_length=128, null=True)
    source = fields.CharField(max_length=16, default="api")  # mail | form | api
    language = fields.CharField(max_length=16, null=True)
    confidential = fields.BooleanField(default=False)
    parent: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="children", null=True, on_delete=fields.SET_NULL
    )
    folder = fields.CharField(max_length=255, null=True)
    # The address the ticket's mails came from first: answers go there before any contact data.
    reply_address = fields.CharField(max_length=320, null=True)
    due_at = fields.DatetimeField(null=True)
    follow_up_at = fields.DatetimeField(null=True)
    last_status_change_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)

    children: fields.ReverseRelation[Ticket]
    owners: fields.ReverseRelation[TicketOwner]
    tags: fields.ReverseRelation[TicketTag]
    messages: fields.ReverseRelation[Message]

    class Meta:
        table = "ticket"
        # The forms' per-address daily cap counts an address's tickets of the last 24 hours.
        indexes = (("reply_address", "created_at"), ("contact_id",), ("order_id",), ("parent_id",))


class TicketOwner(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="owners", on_delete=fields.CASCADE
    )
    owner = fields.CharField(max_length=128, db_index=True)
    role = fields.CharField(max_length=128, null=True)

    class Meta:
        table = "ticket_owner"
        unique_together = (("ticket", "owner"),)


class TicketTag(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="tags", on_delete=fields.CASCADE
    )
    tag = fields.CharField(max_length=128, db_index=True)

    class Meta:
        table = "ticket_tag"
        unique_together = (("ticket", "tag"),)


class Message(Model):
    """A customer-visible message (kind=message) or an internal comment (kind=comment)."""

    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="messages", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=16, default="message")  # message | comment
    direction = fields.CharField(max_length=8, default="in")  # in | out
    from_address = fields.CharField(max_length=320, null=True)
    from_name = fields.CharField(max_length=255, null=True)
    to_addresses: fields.JSONField[list[str]] = fields.JSONField(default=list)
    cc_addresses: fields.JSONField[list[str]] = fields.JSONField(default=list)
    author = fields.CharField(max_length=255, null=True)
    subject = fields.CharField(max_length=1000, null=True)
    text = fields.TextField(default="")
    html = fields.TextField(null=True)
    # The newest reply without the quoted history (the full text stays in `text`).
    reply_text = fields.TextField(null=True)
    topic = fields.CharField(max_length=255, null=True)
    auto_reply = fields.BooleanField(default=False)
    message_id = fields.CharField(max_length=998, null=True, db_index=True)
    in_reply_to = fields.CharField(max_length=998, null=True)
    references: fields.JSONField[list[str]] = fields.JSONField(default=list)
    routed_by = fields.CharField(max_length=64, null=True)
    # e.g. rejected attachments with their reason
    notes: fields.JSONField[list[dict[str, Any]]] = fields.JSONField(default=list)
    created_at = fields.DatetimeField(auto_now_add=True)

    attachments: fields.ReverseRelation[Attachment]

    class Meta:
        table = "message"
        indexes = (("ticket_id",),)


class Attachment(Model):
    """Metadata of a file stored content-addressed under data_dir/attachments/."""

    id = fields.IntField(primary_key=True)
    message: fields.ForeignKeyRelation[Message] = fields.ForeignKeyField(
        f"{APP}.Message", related_name="attachments", on_delete=fields.CASCADE
    )
    filename = fields.CharField(max_length=255)
    content_type = fields.CharField(max_length=255)
    size = fields.BigIntField()
    sha256 = fields.CharField(max_length=64, db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "attachment"
        indexes = (("message_id",),)


class StatusChange(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="status_history", on_delete=fields.CASCADE
    )
    from_type = fields.CharField(max_length=128, null=True)
    from_status = fields.CharField(max_length=128, null=True)
    to_type = fields.CharField(max_length=128)
    to_status = fields.CharField(max_length=128)
    progress = fields.SmallIntField(default=0)
    status_group = fields.CharField(max_length=128, null=True)
    actor = fields.CharField(max_length=255, null=True)
    changed_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "status_change"
        indexes = (("ticket_id",),)


class TicketEvent(Model):
    """The event log: every domain event, written in the transaction of the change."""

    id = fields.BigIntField(primary_key=True)
    ticket: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="events", null=True, on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=64, db_index=True)
    data: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    actor = fields.CharField(max_length=255, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "ticket_event"
        indexes = (("ticket_id",),)


class Outbox(Model):
    """A mail to be sent. Nothing leaves gatewayd that is not a row here first."""

    id = fields.BigIntField(primary_key=True)
    ticket: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="outbox", null=True, on_delete=fields.SET_NULL
    )
    account = fields.CharField(max_length=128, null=True)
    event = fields.CharField(max_length=64, null=True)
    rule = fields.CharField(max_length=255, null=True)
    template = fields.CharField(max_length=255, null=True)
    language = fields.CharField(max_length=16, null=True)
    intended_to: fields.JSONField[list[str]] = fields.JSONField(default=list)
    envelope_to: fields.JSONField[list[str]] = fields.JSONField(default=list)
    mail_from = fields.CharField(max_length=320, null=True)
    subject = fields.CharField(max_length=1000, default="")
    message_id = fields.CharField(max_length=998, null=True, db_index=True)
    content = fields.TextField(default="")  # the complete rendered RFC 5322 message
    status = fields.CharField(max_length=16, default="queued", db_index=True)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField(null=True)
    last_error = fields.TextField(null=True)
    recipient_results: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)
    # When a sender claimed the row (status `sending`); a stale claim is re-queued.
    claimed_at = fields.DatetimeField(null=True)
    claimed_by = fields.CharField(max_length=255, null=True)
    # A mail for the shop's own people (the form's info mail to the merchant, a notice to the
    # owners): customers' mails are sent before it while both wait (`sender.claim_due`).
    internal = fields.BooleanField(default=False, db_default=False)

    class Meta:
        table = "outbox"
        indexes = (("ticket_id",),)


class AutoMailLog(Model):
    """One automatic mail to one outside address: the ledger loop protection counts."""

    id = fields.BigIntField(primary_key=True)
    address = fields.CharField(max_length=320, db_index=True)
    template = fields.CharField(max_length=255)
    outbox_id = fields.BigIntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "auto_mail_log"


class InboundReceipt(Model):
    """Proof that one server mail was imported: a re-fetch only re-applies the server action."""

    id = fields.BigIntField(primary_key=True)
    account = fields.CharField(max_length=128)
    folder = fields.CharField(max_length=255)
    uidvalidity = fields.BigIntField()
    uid = fields.BigIntField()
    message_id = fields.CharField(max_length=998, null=True, db_index=True)
    content_hash = fields.CharField(max_length=64, db_index=True)
    ticket: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="receipts", null=True, on_delete=fields.SET_NULL
    )
    ticket_message: fields.ForeignKeyNullableRelation[Message] = fields.ForeignKeyField(
        f"{APP}.Message", related_name="receipts", null=True, on_delete=fields.SET_NULL
    )
    outcome = fields.CharField(max_length=32, default="imported")  # imported | quarantined | ...
    server_action_done = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "inbound_receipt"
        indexes = (("ticket_id",), ("ticket_message_id",),)
        unique_together = (("account", "folder", "uidvalidity", "uid"),)


class Quarantine(Model):
    """Mail that could not be processed: its raw bytes on disk, the reason here."""

    id = fields.IntField(primary_key=True)
    account = fields.CharField(max_length=128, null=True)
    folder = fields.CharField(max_length=255, null=True)
    uidvalidity = fields.BigIntField(null=True)
    uid = fields.BigIntField(null=True)
    message_id = fields.CharField(max_length=998, null=True)
    sha256 = fields.CharField(max_length=64)
    size = fields.BigIntField(default=0)
    reason = fields.TextField()
    attempts = fields.IntField(default=0)
    status = fields.CharField(max_length=16, default="held")  # held | retried | released
    ticket: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        f"{APP}.Ticket", related_name="quarantined", null=True, on_delete=fields.SET_NULL
    )
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "quarantine"
        indexes = (("ticket_id",),)


class AccountState(Model):
    """Health of one account's poller, shared with `gatewayd status` and /healthz."""

    account = fields.CharField(max_length=128, primary_key=True)
    state = fields.CharField(max_length=32, default="idle")
    last_poll_at = fields.DatetimeField(null=True)
    last_success_at = fields.DatetimeField(null=True)
    last_error = fields.TextField(null=True)
    backoff_seconds = fields.FloatField(default=0)
    instance = fields.CharField(max_length=255, null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "account_state"


class ScheduledRun(Model):
    """A day's run of a `[[scheduled]]` action: the unique (name, day) makes it once a cluster."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=255)
    day = fields.DateField()
    instance = fields.CharField(max_length=255, null=True)
    started_at = fields.DatetimeField()
    finished_at = fields.DatetimeField(null=True)
    counts: fields.JSONField[dict[str, int]] = fields.JSONField(default=dict)

    class Meta:
        table = "scheduled_run"
        unique_together = (("name", "day"),)


class LmtpCount(Model):
    """How often LMTP answered each way, per account, summed over every instance."""

    id = fields.IntField(primary_key=True)
    account = fields.CharField(max_length=128)  # empty for recipients no account has
    # delivered | quarantined | duplicate | deferred | refused_unknown | refused_size | ...
    outcome = fields.CharField(max_length=32)
    count = fields.BigIntField(default=0)
    last_at = fields.DatetimeField(null=True)

    class Meta:
        table = "lmtp_count"
        unique_together = (("account", "outcome"),)
