"""CPU per rendered mail on the form path, beside plain Jinja2 rendering the same template text.

    python -m bench.render [--mails 2000] [--rounds 3] [--reads] [--dump FILE]

No database, no network: the pure part of what a form submission renders inside the ticket's
transaction, with the templates `gatewayd init` writes (German):

- **confirmation**: the `ticket_created` action's mail (`template_variables`, the sandboxed
  `ticket_received` template with header and footer, text and HTML, then `compose_mail`), as
  `outbound.actions._send` makes it; "render only" is the template set's `render` alone;
- **info mail**: the merchant's mail (`ingest.form_ticket.info_mail`: `info_variables`, `_form_info`
  subject and text, `compose_mail`);
- **reads** (with `--reads`, SQLite in a temporary directory): what the action reads before it
  renders, for a form ticket with a contact: `load_ticket_facts` and `load_recipient_facts`
  (the database thread's CPU is in the figure; no transaction, nothing written);
- **floor**: plain `jinja2.Environment(trim_blocks=True, lstrip_blocks=True)` rendering the same
  template files (as gatewayd reads them) with a plain dict of the same values: no sandbox,
  no limits, no layout, no composing.

Printed: CPU µs per mail (this process, `time.process_time`), medians of the rounds, each
round's figures beside its own floor.

`--dump FILE` writes what gatewayd makes of every shipped template (de and en, to the customer
and not, with and without sign-off), of the tests' templates and of info mails with every kind
of field, as JSON (Message-ID, Date and the MIME boundary replaced by fixed text): run it on two
commits and compare the files to show that a change keeps the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from bench.forms import FORM, PAYLOAD
from bench.httpload import machine

SKELETON = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))
# Characters that need escaping, encoding or folding somewhere.
NASTY = {**PAYLOAD, "name": 'Jörg "Jo" <Ünal> & Söhne', "subject": (
    "Größe <b>&amp;</b> {{ TicketID }} $TicketID =?utf-8?q?x?= " + "sehr lange Zeile " * 8),
    "message": "Zeile\twith tab\r\nÄ\u2028ö\n\n" + "x" * 300, "order": "123"}


def make_config(work: Path, templates_dir: Path = SKELETON) -> Any:
    from gatewayd.config import config_from_dict

    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    data = tomllib.loads(text)
    account = data["accounts"][0]
    account.pop("imap")
    account.update({"active": True, "smtp": {
        "host": "127.0.0.1", "port": 25, "security": "none",
        "sender_name": "Shop Kundenservice", "reply_to": account["address"]}})
    data.update({"mode": "live", "database_url": f"sqlite://{work / 'db.sqlite3'}",
                 "data_dir": str(work / "data"), "templates_dir": str(templates_dir),
                 "backend_ticket_url": "https://backend.shop.example/tickets/{id}",
                 "customer_ticket_url": "https://shop.example/konto/tickets/{id}",
                 "forms": [FORM],
                 "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789abcdef"]}})
    return config_from_dict(data, work / "gatewayd.toml")


def form_facts(config: Any, ticket_id: int, language: str, submission: Any) -> Any:
    """A form ticket as `load_ticket_facts` returns it right after the form's transaction
    wrote it (new contact, first message, no owner)."""
    from gatewayd.outbound.variables import sample_facts

    sample = sample_facts(config, language)
    ticket = {**sample.ticket, "id": ticket_id, "title": submission.title, "source": "form",
              "owners": [], "tags": [], "order_id": None, "language": language}
    first, _, last = (submission.name or "").partition(" ")
    contact = {"id": ticket_id, "number": None, "first_name": first, "last_name": last,
               "name": submission.name, "company": None, "language": None,
               "email": submission.email}
    return dataclasses.replace(sample, ticket=ticket, contact=contact, order=None,
                               last_message=submission.message or "", last_comment="",
                               languages=(language, config.default_language))


def submission_for(config: Any, payload: dict[str, str] | None = None) -> Any:
    import urllib.parse

    from gatewayd.ingest import forms as logic
    from gatewayd.ingest.form_body import parse_urlencoded

    form = config.forms[0]
    body = urllib.parse.urlencode(payload or PAYLOAD).encode()
    found = logic.validate(form, parse_urlencoded(body))
    assert not isinstance(found, list), found
    return found


class Mails:
    """The two mails of one form submission, made as gatewayd makes them."""

    def __init__(self, config: Any):
        from gatewayd.ingest import forms as logic
        from gatewayd.outbound.actions import templates_for

        self.config = config
        self.templates = templates_for(config)
        self.submission = submission_for(config)
        self.links = logic.Links(contact_id=1, order_id=None)
        self.account = config.answering_account

    def confirmation(self, ticket_id: int, language: str = "de", *, compose: bool = True,
                     for_customer: bool = True, template: str = "ticket_received",
                     signoff: bool = False, facts: Any = None) -> Any:
        from gatewayd.outbound.mails import Envelope, compose_mail
        from gatewayd.outbound.variables import template_variables

        config = self.config
        facts = facts or form_facts(config, ticket_id, language, self.submission)
        variables = template_variables(config, facts, for_customer=for_customer)
        rendered = self.templates.render(
            template, facts.languages, config.language_fallback, variables,
            signoff=(variables["Greeting"], variables["Signature"]) if signoff else None)
        if not compose:
            return rendered
        account = self.account
        envelope = Envelope(
            from_address=account.address, from_name=account.smtp.sender_name,
            to=[self.submission.email], subject=rendered.subject,
            message_id=f"<{ticket_id}.bench@shop.example>", ticket_id=ticket_id,
            reply_to=account.smtp.reply_to, in_reply_to=facts.thread.answer_to,
            references=facts.thread.message_ids, auto_submitted="auto-replied",
            loop_marker=account.address, language=rendered.language)
        return rendered, compose_mail(envelope, rendered.text, rendered.html)

    def info(self, ticket_id: int, submission: Any = None, links: Any = None) -> Any:
        from gatewayd.ingest.form_ticket import info_mail

        return info_mail(self.config, self.config.forms[0], ticket_id,
                         submission or self.submission, links or self.links, "de")


# ------------------------------------------------------------------------------ the floor


class Floor:
    """Plain Jinja2 over the same files and values: the least rendering these mails costs."""

    def __init__(self, mails: Mails):
        from gatewayd.ingest.form_texts import info_variables
        from gatewayd.outbound.plenty import translate
        from gatewayd.outbound.variables import template_variables

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        html_env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, autoescape=True)
        html_env.filters["nl2br"] = lambda value: value

        def load(env: jinja2.Environment, name: str) -> jinja2.Template:
            return env.from_string(translate((SKELETON / name).read_text("utf-8")))

        self.confirmation_parts = [load(env, f"{name}/de.{part}") for name, part in (
            ("ticket_received", "subject"), ("ticket_received", "txt"), ("_header", "txt"),
            ("_footer", "txt"))] + [load(html_env, f"{name}/de.html") for name in (
                "ticket_received", "_header", "_footer")]
        self.info_parts = [load(env, "_form_info/de.subject"), load(env, "_form_info/de.txt")]
        config = mails.config
        facts = form_facts(config, 1, "de", mails.submission)
        self.confirmation_vars = dict(template_variables(config, facts, for_customer=True))
        self.info_vars = dict(info_variables(
            config, config.forms[0], 1, mails.submission, order_problem=None, language="de",
            form_language="de"))

    def confirmation(self, ticket_id: int) -> list[str]:
        variables = {**self.confirmation_vars, "TicketID": ticket_id}
        return [t.render(variables) for t in self.confirmation_parts]

    def info(self, ticket_id: int) -> list[str]:
        variables = {**self.info_vars, "TicketID": ticket_id}
        return [t.render(variables) for t in self.info_parts]


# ------------------------------------------------------------------------------ measuring


def cpu_us_per_mail(work: Callable[[int], object], mails: int) -> float:
    for i in range(50):  # warm: compiled templates, caches
        work(i)
    start = time.process_time()
    for i in range(1000, 1000 + mails):
        work(i)
    return (time.process_time() - start) / mails * 1e6


def measure(args: argparse.Namespace) -> None:
    from gatewayd import logs

    logs.configure("WARNING", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        mails = Mails(make_config(Path(tmp)))
        floor = Floor(mails)
        rows: dict[str, Callable[[int], object]] = {
            "confirmation, render only": lambda i: mails.confirmation(i, compose=False),
            "confirmation, variables + render + compose": mails.confirmation,
            "info mail, variables + render + compose": mails.info,
            "floor: confirmation's 7 files, plain Jinja2": floor.confirmation,
            "floor: info mail's 2 files, plain Jinja2": floor.info,
        }
        results: dict[str, list[float]] = {name: [] for name in rows}
        print(f"render bench, {args.mails} mails x {args.rounds} rounds; "
              f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}, Python "
              f"{sys.version.split()[0]}, Jinja2 {jinja2.__version__}")
        for number in range(1, args.rounds + 1):
            for name, work in rows.items():
                results[name].append(cpu_us_per_mail(work, args.mails))
            print(f"round {number}: " + ", ".join(
                f"{name.split(',')[0].split(':')[0]} {values[-1]:.0f}"
                for name, values in results.items()))
        if args.reads:
            import asyncio

            results["reads: ticket facts + recipient facts (SQLite)"] = asyncio.run(
                _reads_per_mail(mails.config, max(args.mails // 4, 100), args.rounds))
        print(f"\n{'CPU µs per mail (median)':<48} {'µs':>7}")
        for name, values in results.items():
            print(f"{name:<48} {statistics.median(values):>7.0f}")
        both = (statistics.median(results["confirmation, variables + render + compose"])
                + statistics.median(results["info mail, variables + render + compose"]))
        floors = (statistics.median(results["floor: confirmation's 7 files, plain Jinja2"])
                  + statistics.median(results["floor: info mail's 2 files, plain Jinja2"]))
        print(f"{'both mails of one submission':<48} {both:>7.0f}  "
              f"({both / floors:.1f} x the floor's {floors:.0f})")


async def _reads_per_mail(config: Any, mails: int, rounds: int) -> list[float]:
    from gatewayd.outbound.recipients import load_recipient_facts
    from gatewayd.outbound.variables import load_ticket_facts
    from gatewayd.store.db import open_database
    from gatewayd.store.models import Contact
    from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore

    figures = []
    async with open_database(config.database_url):
        contact = await Contact.create(first_name="Erika", last_name="Muster",
                                       email_private=PAYLOAD["email"])
        ticket = await TicketStore(config).create_ticket(
            NewTicket(title=PAYLOAD["subject"], source="form", contact_id=contact.id,
                      reply_address=PAYLOAD["email"], language="de"),
            first_message=NewMessage(text=PAYLOAD["message"], from_address=PAYLOAD["email"]))

        async def read() -> None:
            facts = await load_ticket_facts(config, ticket)
            await load_recipient_facts(config, ticket,
                                       owner_names=[o["name"] for o in facts.ticket["owners"]])

        for _ in range(50):
            await read()
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(mails):
                await read()
            figures.append((time.process_time() - start) / mails * 1e6)
    return figures


# ------------------------------------------------------------------------------ equality


_VOLATILE = [(re.compile(r"^Date: .*$", re.M), "Date: (date)"),
             (re.compile(r"^Message-ID: .*$", re.M), "Message-ID: (id)"),
             (re.compile(r"=_gw_[0-9a-f]{24}"), "=_gw_(boundary)")]


def _composed(content: str) -> str:
    for pattern, fixed in _VOLATILE:
        content = pattern.sub(fixed, content)
    return content


def _test_template_sets() -> dict[str, dict[str, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import test_templates, test_templates_plenty

    return {"BASIC": test_templates.BASIC, "PLENTY": test_templates_plenty.PLENTY,
            "NO_SIGNOFF": test_templates_plenty.NO_SIGNOFF}


def dump(path: Path) -> None:
    from gatewayd import logs
    from gatewayd.ingest import forms as logic
    from gatewayd.outbound.templates import TemplateProblem, TemplateSet
    from gatewayd.outbound.variables import sample_facts

    logs.configure("WARNING", json=True)
    out: dict[str, Any] = {}

    def record(key: str, make: Callable[[], Any]) -> None:
        try:
            found = make()
        except TemplateProblem as exc:
            out[key] = {"problem": exc.kind, "message": str(exc)}
            return
        rendered, composed = found if isinstance(found, tuple) else (found, None)
        if hasattr(rendered, "subject") and not hasattr(rendered, "content"):
            out[key] = {"language": rendered.language, "subject": rendered.subject,
                        "text": rendered.text, "html": rendered.html}
            if composed is not None:
                out[key]["mail"] = _composed(composed.content)
        else:
            out[key] = {"subject": rendered.subject, "mail": _composed(rendered.content)}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets: dict[str, Path] = {"skeleton": SKELETON}
        for name, files in _test_template_sets().items():
            root = work / "templates" / name
            for file, text in files.items():
                (root / file).parent.mkdir(parents=True, exist_ok=True)
                (root / file).write_text(text, encoding="utf-8")
            sets[name] = root
        for set_name, root in sets.items():
            mails = Mails(make_config(work, root))
            odd = submission_for(mails.config, NASTY)
            templates = TemplateSet(root)
            for template in templates.names():
                for language in ("de", "en", "fr"):
                    for for_customer in (True, False):
                        for signoff in (False, True):
                            for kind in ("form", "odd", "sample"):
                                facts = (sample_facts(mails.config, language)
                                         if kind == "sample" else form_facts(
                                             mails.config, 42, language,
                                             odd if kind == "odd" else mails.submission))
                                key = (f"{set_name}/{template}/{language}/customer="
                                       f"{for_customer}/signoff={signoff}/{kind}")
                                record(key, functools.partial(
                                    mails.confirmation, 42, language, for_customer=for_customer,
                                    template=template, signoff=signoff, facts=facts))
        mails = Mails(make_config(work))
        with_file = dataclasses.replace(
            submission_for(mails.config, {**PAYLOAD, "order": "17"}),
            files=(logic.UploadedFile("file", "rechnung.pdf", "application/pdf", b"%PDF" * 100),))
        for key, submission, links in (
            ("plain", None, None),
            ("odd", submission_for(mails.config, NASTY), None),
            ("attachment, missing order", with_file,
             logic.Links(1, None, order_problem="missing")),
            ("foreign order", with_file, logic.Links(1, None, order_problem="foreign")),
        ):
            for language in ("de", "en"):
                config = mails.config.model_copy(update={"merchant_language": language})
                lang_mails = Mails(config)
                record(f"info/{key}/{language}",
                       functools.partial(lang_mails.info, 42, submission, links))
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                    encoding="utf-8")
    print(f"{len(out)} mails written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", action="store_true",
                        help="also the action's database reads (SQLite, temporary)")
    parser.add_argument("--dump", type=Path, help="write every rendered mail to this file")
    args = parser.parse_args()
    if args.dump:
        dump(args.dump)
    else:
        measure(args)


if __name__ == "__main__":
    main()
