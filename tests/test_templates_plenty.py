"""Templates as merchants bring them from plentymarkets: the manual's `$TicketID`-style variables
are read as the Jinja ones (and `check` refuses look-alikes that would be mailed as written),
and a staff message mailed to the customer ends with the owner's greeting and signature unless
the template places them itself."""

from __future__ import annotations

import email
import email.policy
import shutil
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gatewayd.cli import main as cli_main
from gatewayd.config import Config
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound.actions import event_action_hook
from gatewayd.outbound.checks import template_problems
from gatewayd.outbound.plenty import suspicious, translate
from gatewayd.outbound.templates import TemplateSet
from gatewayd.outbound.variables import sample_facts, template_variables
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore
from tests.conftest import skeleton_data
from tests.test_config import to_toml
from tests.test_sender import account_data
from tests.test_templates import BASIC, write

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SKELETON = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))

PLENTY = {
    **BASIC,
    "plenty/de.subject": "[Ticket-ID $TicketID] $TicketTitle",
    "plenty/de.txt": ("Status: $TicketStatus, Priorität $TicketPriority\n"
                      "Link: $TicketBackendURL\n$TicketLastMessage\n"
                      "Versand ab $5 frei. {{ \"$TicketID\" }} bleibt stehen.\n"
                      "{% if $TicketURL %}Online: $TicketURL{% endif %}\n"
                      "{# $TicketID #}{% raw %}Roh: $TicketID{% endraw %}"),
    "plenty/de.html": "<p>$TicketTitle</p><p>$TicketLastMessage</p>",
}


def variables(config: Config) -> dict[str, Any]:
    return template_variables(config, sample_facts(config, "de"), for_customer=True)


@pytest.fixture
def tconfig(make_config: Callable[..., Config], tmp_path: Path) -> Callable[..., Config]:
    def build(files: dict[str, str], **overrides: Any) -> Config:
        root = write(tmp_path / "templates", files)
        return make_config(templates_dir=str(root), **overrides)
    return build


def test_translation_touches_only_the_manuals_names() -> None:
    assert translate("$TicketID $TicketIDs $5 $Shop") == "{{ TicketID }} $TicketIDs $5 $Shop"
    assert translate("{{ $TicketTitle|upper }} {{ '$TicketTitle' }}") == (
        "{{ TicketTitle|upper }} {{ '$TicketTitle' }}")
    assert translate("a\n$Greeting\n$Signature\nb") == "a\n{{ Greeting }}\n{{ Signature }}\nb"
    assert translate("{% raw %}$TicketID{% endraw %}{# $TicketID #}") == (
        "{% raw %}$TicketID{% endraw %}{# $TicketID #}")
    assert translate("Preis: 5 $ {{ x }} $") == "Preis: 5 $ {{ x }} $"


@sqlite_only
def test_plentymarkets_variables_render_as_their_values(tconfig: Callable[..., Config]) -> None:
    config = tconfig(PLENTY, customer_ticket_url="https://shop.example/t/{id}",
                     backend_ticket_url="https://backend.shop.example/tickets/{id}")
    mail = TemplateSet(config.templates_dir).render("plenty", ["de"], [], variables(config))
    assert mail.subject == "[Ticket-ID 4711] Sample: where is my parcel?"
    kept = mail.text.replace("$TicketID bleibt", "").replace("Roh: $TicketID", "")
    assert "Status: Neu" in mail.text and "$Ticket" not in kept
    assert "Priorität 3" in mail.text and "Sample message text." in mail.text
    assert "/tickets/4711" in mail.text and "Online: https://shop.example/t/4711" in mail.text
    assert "Versand ab $5 frei." in mail.text
    assert "$TicketID bleibt stehen." in mail.text and "Roh: $TicketID" in mail.text
    assert mail.html and "<p>Sample: where is my parcel?</p>" in mail.html
    assert [p for p in template_problems(config) if p.key.startswith("templates_dir/plenty/de")
            ] == []  # the manual's names are accepted, not refused


@sqlite_only
def test_check_refuses_look_alikes_with_the_fix(tconfig: Callable[..., Config]) -> None:
    files = {**PLENTY, "plenty/de.txt": "Nr. $TicketId\nText:\n$TicketLastMesage, $Shop $5"}
    config = tconfig(files)
    found = [p for p in template_problems(config) if p.key == "templates_dir/plenty/de.txt"]
    assert [p.severity for p in found] == ["error", "error"]
    assert "line 1: $TicketId is not a template variable" in found[0].message
    assert found[0].fix.startswith("write {{ TicketID }}")
    assert "line 3: $TicketLastMesage" in found[1].message
    assert "{{ TicketLastMessage }}" in found[1].fix
    assert [s.found for s in suspicious("$Signatur $greeting $HOME")] == ["$Signatur",
                                                                         "$greeting"]


def test_check_command_names_the_file_and_the_fix(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "site"
    shutil.copytree(SKELETON, target / "templates")
    (target / "templates" / "staff_reply" / "de.subject").write_text(
        "Re: $TicketTitel", encoding="utf-8")
    data = skeleton_data()
    data.update(templates_dir="templates", database_url=f"sqlite://{tmp_path / 'db.sqlite3'}",
                http={"listen": "127.0.0.1:0", "api_tokens": ["x" * 20]})
    (target / "gatewayd.toml").write_text(to_toml(data), encoding="utf-8")
    assert cli_main(["--config", str(target / "gatewayd.toml"), "check"]) == 1
    err = capsys.readouterr().err
    assert ("gatewayd.toml:templates_dir/staff_reply/de.subject: line 1: $TicketTitel is not a "
            "template variable and would be mailed as it is — write {{ TicketTitle }}") in err


# ------------------------------------------------------------------------ greeting and signature

NO_SIGNOFF = {
    **BASIC,
    "_footer/de.txt": "-- Ticket-ID {{ TicketID }}",
    "_footer/en.txt": "-- Ticket-ID {{ TicketID }}",
    "reply/de.subject": "Re: {{ TicketTitle }}",
    "reply/de.txt": "{{ TicketLastMessage }}",
    "reply/de.html": "<p>{{ TicketLastMessage|nl2br }}</p>",
    "signed/de.subject": "Re: {{ TicketTitle }}",
    "signed/de.txt": "{{ TicketLastMessage }}\n\n$Greeting\n{{ Signature }}",
}


@sqlite_only
def test_signoff_goes_below_the_body_unless_the_template_places_it(
    tconfig: Callable[..., Config]
) -> None:
    config = tconfig(NO_SIGNOFF)
    templates = TemplateSet(config.templates_dir)
    signoff = ("Viele Grüße", "Anna <Berg>")
    mail = templates.render("reply", ["de"], [], variables(config), signoff=signoff)
    assert "Sample message text.\n\nViele Grüße\nAnna <Berg>\n\n-- Ticket-ID 4711" in mail.text
    assert mail.html and "<p>Viele Grüße<br>Anna &lt;Berg&gt;</p>" in mail.html
    placed = templates.render("signed", ["de"], [], variables(config), signoff=signoff)
    # The template's own greeting and signature (the sample ticket's owner), nothing added.
    assert placed.text.count("Anna Berg, Kundenservice") == 1 and "<Berg>" not in placed.text
    # A footer that reads Signature places it for every template.
    config = tconfig({**NO_SIGNOFF, "_footer/de.txt": "{{ Signature }}"})
    mail = TemplateSet(config.templates_dir).render("reply", ["de"], [], variables(config),
                                                     signoff=signoff)
    assert "<Berg>" not in mail.text and "Anna Berg, Kundenservice" in mail.text
    assert "Grüße" not in templates.render("reply", ["de"], [], variables(config)).text


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


@sqlite_only
@pytest.mark.parametrize("footer_places_it", [False, True])
async def test_a_staff_message_is_mailed_with_its_authors_greeting_and_signature(
    tconfig: Callable[..., Config], sink: SmtpSink, footer_places_it: bool
) -> None:
    files = dict(NO_SIGNOFF)
    if footer_places_it:
        files["_footer/de.txt"] = "{{ Greeting }}\n{{ Signature }}\n-- {{ TicketID }}"
    owners = [{"name": "anna", "email": "anna@shop.example", "greeting": "Herzliche Grüße",
               "signature": "Anna Berg, Kundenservice"},
              {"name": "bert", "email": "bert@shop.example", "greeting": "Gruß",
               "signature": "Bert"}]
    events = [{"name": "Antwort", "on": "staff_message",
               "actions": [{"send_template": "reply", "to": "customer"}]},
              {"name": "Info", "on": "staff_message",
               "actions": [{"send_template": "reply", "to": "owners"}]}]
    config = tconfig(files, mode="live", accounts=[account_data("support", sink)],
                     owners=owners, events=events, default_language="de")
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(
            NewTicket(title="Paket", source="mail", account="support", owners=[("bert", None)],
                      reply_address="kunde@example.org"),
            first_message=NewMessage(text="Wo ist mein Paket?", from_address="kunde@example.org"))
        await store.add_message(ticket.id, NewMessage(text="Ihr Paket ist unterwegs.",
                                                      direction="out", author="anna"))
        customer, owners_mail = await Outbox.filter(ticket_id=ticket.id).order_by("id")
    parsed = email.message_from_string(customer.content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert "Ihr Paket ist unterwegs.\n\nHerzliche Grüße\nAnna Berg, Kundenservice" in body
    assert body.count("Anna Berg") == 1 and "Bert" not in body  # the author's, once
    to_owners = email.message_from_string(owners_mail.content, policy=email.policy.default)
    owner_body = to_owners.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert ("Anna Berg" in owner_body) is footer_places_it  # staff get no appended sign-off
