"""The ticket vocabulary of the configuration: status groups, ticket types with their statuses,
roles and owners."""

from __future__ import annotations

from pydantic import Field

from gatewayd.config.base import StrictModel


class StatusGroup(StrictModel):
    """`[[status_groups]]`: a group of statuses (e.g. open, closed) that filters can name."""

    name: str = Field(min_length=1, examples=["Offen"])
    """The group's name, as statuses (`group`) and filters (`status_groups`) name it.

    Check: duplicate names are an error."""


class Status(StrictModel):
    """One status of a ticket type."""

    name: str = Field(min_length=1, examples=["Neu"])
    """The status's name; unique within its type.

    Check: a duplicate within the type is an error."""
    progress: int = Field(ge=0, le=100, examples=[0])
    """How far a ticket in this status is, 0–100 (%)."""
    group: str = Field(min_length=1, examples=["Offen"])
    """The status group it belongs to.

    Check: a group not listed under `[[status_groups]]` is an error."""


class TicketType(StrictModel):
    """`[[ticket_types]]`: a ticket type and its statuses; the first type and its first status
    are what API tickets get when they name none."""

    name: str = Field(min_length=1, examples=["Kundenanfrage"])
    """The type's name.

    Check: at least one type is required; duplicate names are an error."""
    statuses: list[Status] = Field(min_length=1)
    """The type's statuses, in order (`{ name, progress, group }` each)."""

    def status(self, name: str) -> Status | None:
        return next((s for s in self.statuses if s.name == name), None)


class Role(StrictModel):
    """`[[roles]]`: a role owners can have."""

    name: str = Field(min_length=1, examples=["Support"])
    """The role's name.

    Check: duplicate names are an error."""


class Owner(StrictModel):
    """`[[owners]]`: a person who owns tickets; event actions may mail them (`to = "owners"`)."""

    name: str = Field(min_length=1, examples=["anna"])
    """The owner's name, as tickets (`owners`), filters and `set_owner` name it."""
    email: str | None = Field(default=None, examples=["anna@shop.example"])
    """Where mails to `owners` go; without it the owner gets no mail.

    Check: an error when it is not an e-mail address."""
    role: str | None = Field(default=None, examples=["Support"])
    """The owner's role.

    Check: a role not listed under `[[roles]]` is an error."""
    greeting: str = Field(default="", examples=["Viele Grüße"])
    """The `Greeting` template variable in mails of tickets this owner owns first."""
    signature: str = Field(default="", examples=["Anna Berg, Kundenservice"])
    """The `Signature` template variable in mails of tickets this owner owns first."""


class TicketRef(StrictModel):
    """A ticket type and one of its statuses."""

    type: str = Field(examples=["Kundenanfrage"])
    """A ticket type's name.

    Check: an unknown type is an error."""
    status: str = Field(examples=["Neu"])
    """A status of that type.

    Check: a status the type does not have is an error."""
