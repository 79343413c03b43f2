"""`gatewayd check` sees contradictions: an event action or scheduled action that sets a status
some ticket type it can fire for does not have (the store skips it for that type)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gatewayd.config import Config, Problem
from gatewayd.outbound.checks import rule_problems

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

REOPEN: dict[str, Any] = {"name": "Wieder öffnen", "on": "customer_message",
                          "filter": {"status_groups": ["Geschlossen"]},
                          "actions": [{"set_status": "Neu"},
                                      {"send_template": "owner_notice", "to": "owners"}]}
STAFF = {"name": "Antwort", "on": "staff_message",
         "actions": [{"send_template": "staff_reply", "to": "customer"}]}


def status_warnings(config: Config) -> list[Problem]:
    return [p for p in rule_problems(config)
            if p.key.endswith((".set_status", ".status"))]


@sqlite_only
def test_a_rule_for_every_type_setting_a_status_one_type_lacks(
    make_config: Callable[..., Config]
) -> None:
    config = make_config(events=[STAFF, REOPEN])
    (problem,) = status_warnings(config)
    assert problem.severity == "warning"
    assert problem.key == "events[1](Wieder öffnen).actions[0].set_status"
    assert "'Wieder öffnen'" in problem.message and "'Neu'" in problem.message
    assert "'Beschwerde'" in problem.message and "skipped" in problem.message
    assert "['Kundenanfrage']" in problem.fix and "'Eingegangen'" in problem.fix


@sqlite_only
@pytest.mark.parametrize("flt", [
    {"types": ["Kundenanfrage"]},
    {"statuses": ["Erledigt"]},  # only Kundenanfrage has it
    {"types": ["Kundenanfrage"], "status_groups": ["Geschlossen"]},
])
def test_filters_that_keep_the_rule_to_types_with_the_status(
    make_config: Callable[..., Config], flt: dict[str, Any]
) -> None:
    config = make_config(events=[STAFF, {**REOPEN, "filter": flt}])
    assert status_warnings(config) == []


@sqlite_only
def test_no_type_it_can_fire_for_has_the_status(make_config: Callable[..., Config]) -> None:
    config = make_config(events=[STAFF, {**REOPEN, "filter": {"types": ["Beschwerde"]}}])
    (problem,) = status_warnings(config)
    assert "no ticket type it can fire for" in problem.message and "always" in problem.message


@sqlite_only
def test_new_ticket_rules_see_only_the_types_accounts_and_forms_create(
    make_config: Callable[..., Config]
) -> None:
    created = {"name": "Neu zuweisen", "on": "ticket_created",
               "filter": {"sources": ["mail", "form"]},
               "actions": [{"set_status": "In Bearbeitung"}]}
    # Accounts and the form create Kundenanfrage tickets, which have the status.
    assert status_warnings(make_config(events=[STAFF, created])) == []
    # API tickets can be of any type: Beschwerde lacks it.
    with_api = {**created, "filter": {"sources": ["mail", "api"]}}
    (problem,) = status_warnings(make_config(events=[STAFF, with_api]))
    assert "'Beschwerde'" in problem.message and "'In Bearbeitung'" in problem.message
    # A form creating Beschwerde tickets makes the form source reach that type.
    form = {"name": "beschwerde", "ticket": {"type": "Beschwerde", "status": "Eingegangen"},
            "fields": [{"name": "email", "type": "email", "required": True}]}
    config = make_config(events=[STAFF, created], forms=[form])
    (problem,) = status_warnings(config)
    assert problem.key == "events[1](Neu zuweisen).actions[0].set_status"


@sqlite_only
def test_scheduled_set_status_is_checked_too(make_config: Callable[..., Config]) -> None:
    job = {"name": "Alte schließen", "at": "03:00", "action": "set_status", "status": "Erledigt",
           "filter": {"status_groups": ["Offen"], "last_status_change_days": 30}}
    (problem,) = status_warnings(make_config(events=[STAFF], scheduled=[job]))
    assert problem.key == "scheduled[0](Alte schließen).status"
    assert "'Beschwerde'" in problem.message and "'Erledigt'" in problem.message
    fine = {**job, "filter": {"types": ["Kundenanfrage"]}}
    assert status_warnings(make_config(events=[STAFF], scheduled=[fine])) == []


@sqlite_only
def test_the_generated_configuration_has_no_contradiction(
    make_config: Callable[..., Config]
) -> None:
    assert rule_problems(make_config()) == []
