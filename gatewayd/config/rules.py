"""What gatewayd does on its own: event actions (`[[events]]`) and scheduled actions
(`[[scheduled]]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gatewayd.config.base import StrictModel


class EventFilter(StrictModel):
    """When an event action applies: every key given must hold; a list means "any of"."""

    types: list[str] = Field(default=[], examples=[["Kundenanfrage"]])
    """Ticket types.

    Check: unknown types are an error."""
    statuses: list[str] = Field(default=[], examples=[["Neu"]])
    """Statuses (of any type).

    Check: unknown statuses are an error; a filter no ticket can match (a type with none of
    the statuses) is a warning."""
    status_groups: list[str] = Field(default=[], examples=[["Geschlossen"]])
    """Status groups.

    Check: unknown groups are an error."""
    sources: list[Literal["mail", "form", "api"]] = Field(default=[], examples=[["mail", "form"]])
    """Where the ticket came from: `mail`, `form`, `api`."""
    accounts: list[str] = Field(default=[], examples=[["support"]])
    """Accounts (by name).

    Check: unknown accounts are an error."""
    owners: list[str] = Field(default=[], examples=[["anna"]])
    """Owners (by name).

    Check: unknown owners are an error."""
    priorities: list[int] = Field(default=[], examples=[[4, 5]])
    """Priorities, 0–5.

    Check: a priority outside 0–5 is an error."""
    confidential: bool | None = None
    """Only confidential (`true`) or only other (`false`) tickets; unset: both."""

    @field_validator("priorities")
    @classmethod
    def _priority_range(cls, value: list[int]) -> list[int]:
        for p in value:
            if not 0 <= p <= 5:
                raise ValueError(f"priority {p} is outside 0–5 — use priorities from 0 to 5")
        return value


class EventAction(StrictModel):
    """One action: exactly one of `send_template` (with `to`), `set_status`, `set_owner`."""

    send_template: str | None = Field(default=None, examples=["ticket_received"])
    """Render this template (`templates_dir/<name>/<lang>.*`) and queue the mail.

    Check: an error when the template does not exist or does not render in a configured
    language with sample data; a missing translation with a fallback is a warning."""
    to: str | None = Field(default=None, examples=["customer"])
    """The recipient of `send_template`: `customer`, `order_billing`, `order_delivery`,
    `contact_private`, `contact_business`, `contact_paypal`, `owners`, or an address.

    Check: required with `send_template`, refused with the other actions."""
    set_status: str | None = Field(default=None, examples=["In Bearbeitung"])
    """Set this status (tickets whose type lacks it are skipped).

    Check: an unknown status is an error."""
    set_owner: str | None = Field(default=None, examples=["anna"])
    """Make this owner the ticket's owner.

    Check: an unknown owner is an error."""


class EventRule(StrictModel):
    """`[[events]]`: an event action: on an event, when the filter holds, run the actions in
    order (later actions see what earlier ones changed)."""

    name: str = Field(min_length=1, examples=["Eingangsbestätigung"])
    """The rule's name, in logs and in the outbox row's `rule`.

    Check: duplicates are an error."""
    on: Literal[
        "ticket_created", "customer_message", "staff_message", "comment_added", "status_changed"
    ]
    """The event: `ticket_created`, `customer_message`, `staff_message`, `comment_added` or
    `status_changed`."""
    active: bool = True
    """An inactive rule is kept but never runs."""
    filter: EventFilter = EventFilter()
    """When the rule applies (see the filter keys); empty: always."""
    actions: list[EventAction] = Field(min_length=1)
    """What to do, in order.

    Check: an action needs exactly one of `send_template`, `set_status`, `set_owner`; a mail
    that would always be suppressed is reported."""


class ScheduledFilter(StrictModel):
    """Which tickets a scheduled action takes: every key given must hold."""

    types: list[str] = Field(default=[], examples=[["Kundenanfrage"]])
    """Ticket types.

    Check: unknown types are an error."""
    statuses: list[str] = Field(default=[], examples=[["Erledigt"]])
    """Statuses.

    Check: unknown statuses are an error."""
    status_groups: list[str] = Field(default=[], examples=[["Geschlossen"]])
    """Status groups.

    Check: unknown groups are an error."""
    folders: list[str] = Field(default=[], examples=[["Archiv"]])
    """Ticket folders."""
    tags: list[str] = Field(default=[], examples=[["spam"]])
    """Tags (any of them)."""
    last_status_change_days: int | None = Field(default=None, ge=0, le=36500, examples=[90])
    """Only tickets whose status last changed at least this many days ago."""


class Scheduled(StrictModel):
    """`[[scheduled]]`: an action run daily at a set time; a run missed while the daemon was
    down runs at its start."""

    name: str = Field(min_length=1, examples=["Erledigte nach 90 Tagen löschen"])
    """The job's name, in logs and in the `scheduled_run` table.

    Check: duplicates are an error."""
    at: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["03:00"])
    """The time of day, `HH:MM` in the host's local time."""
    active: bool = True
    """An inactive job never runs."""
    filter: ScheduledFilter = ScheduledFilter()
    """Which tickets it takes."""
    action: Literal["delete", "set_status", "move_to_folder"]
    """`delete` (tickets with their messages and unused attachment files), `set_status` or
    `move_to_folder`."""
    status: str | None = Field(default=None, examples=["Erledigt"])
    """The status `set_status` sets.

    Check: required for `set_status`, and must be a known status."""
    folder: str | None = Field(default=None, examples=["Archiv"])
    """The folder `move_to_folder` moves to.

    Check: required for `move_to_folder`."""
