"""Shop forms in German and English: the language a visitor gets (the form's own, the `lang`
field, Accept-Language with quality values, default_language), the pages and texts in it over
real HTTP, the ticket's language, the merchant's info mail in the merchant's language, merchants'
edits of the templates, and what `check` says about them."""

from __future__ import annotations

import email
import email.policy
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.config import Config
from gatewayd.ingest.form_checks import form_problems
from gatewayd.ingest.form_texts import accept_language, form_language, pick_language
from gatewayd.store.models import Outbox, Ticket
from tests.conftest import Api

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SKELETON = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))
JSON = {"Accept": "application/json"}
FIELDS = {"email": "erika@example.org", "name": "Erika", "subject": "Lieferung",
          "message": "Wo bleibt mein Paket?"}


# A contact form labelled in German and English.
BILINGUAL_FIELDS = [
    {"name": "email", "type": "email", "required": True,
     "label": {"de": "E-Mail", "en": "E-mail"}},
    {"name": "name", "type": "name", "label": "Name"},
    {"name": "subject", "type": "subject", "label": {"de": "Betreff", "en": "Subject"}},
    {"name": "message", "type": "message", "required": True,
     "label": {"de": "Nachricht", "en": "Message"}},
]


def bilingual(make_config: Callable[..., Config], templates: Path | None = None,
              **form: Any) -> Config:
    definition = {
        "name": "contact", "ticket": {"type": "Kundenanfrage", "status": "Neu"},
        "title": {"de": "Kontakt", "en": "Contact"}, "rate_limit": 0,
        "fields": BILINGUAL_FIELDS,
        **form,
    }
    extra: dict[str, Any] = {"templates_dir": str(templates)} if templates else {}
    return make_config(forms=[definition], **extra)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return bilingual(make_config)


# ------------------------------------------------------------------------------ the language


def test_accept_language_honours_quality_values() -> None:
    assert accept_language("de;q=0.1, en-GB;q=0.8, fr, *;q=0.5, it;q=0") == [
        "fr", "en-gb", "de"]
    assert accept_language("en-US,en;q=0.9,de;q=0.9") == ["en-us", "en", "de"]  # ties: order
    assert accept_language("de;q=abc, <script>, en") == ["en"]
    assert accept_language(None) == []
    assert pick_language(["fr-ch", "en-gb"], ["de", "en"]) == "en"
    assert pick_language(["de_AT"], ["de", "en"]) == "de"


@sqlite_only
def test_the_forms_language_before_the_lang_field_before_the_browser(config: Config) -> None:
    form = config.forms[0]
    assert form_language(config, form, None, "en-US,en;q=0.9") == "en"
    assert form_language(config, form, "de", "en-US,en;q=0.9") == "de"  # the page's field
    assert form_language(config, form, "fr", "fr, en;q=0.2") == "en"  # fr is not configured
    assert form_language(config, form, None, "fr, it") == "de"  # default_language
    assert form_language(config, form, "xx", None) == "de"
    fixed = form.model_copy(update={"language": "en"})
    assert form_language(config, fixed, "de", "de") == "en"


# ------------------------------------------------------------------------------ over HTTP


@sqlite_only
async def test_pages_in_the_visitors_language(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        en = (await public.get("/forms/contact", headers={
            "Accept-Language": "en-US,en;q=0.9,de;q=0.8"})).text
        de = (await public.get("/forms/contact", headers={"Accept-Language": "fr, de;q=0.5"}))
        asked = (await public.get("/forms/contact?lang=en",
                                  headers={"Accept-Language": "de"})).text
        thanks = (await public.get("/forms/contact/thanks",
                                   headers={"Accept-Language": "en"})).text
    assert '<html lang="en">' in en and "<h1>Contact</h1>" in en
    assert 'E-mail <span class="required">(required)</span>' in en
    assert '<label for="gwf-message">Message <span class' in en and ">Send</button>" in en
    assert '<input type="hidden" name="lang" value="en">' in en
    assert de.headers["vary"] == "Accept-Language"
    assert '<html lang="de">' in de.text and "<h1>Kontakt</h1>" in de.text
    assert 'E-Mail <span class="required">(Pflichtfeld)</span>' in de.text
    assert ">Senden</button>" in de.text
    assert '<html lang="en">' in asked
    assert '<html lang="en">' in thanks and "Thank you" in thanks


@sqlite_only
async def test_field_errors_in_the_language_of_the_post(api: Api) -> None:
    bad = {"email": "not-an-address", "message": "", "lang": "en"}
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        as_json = await public.post("/forms/contact", data=bad, headers={
            **JSON, "Accept-Language": "de"})
        as_browser = await public.post("/forms/contact", data=bad)
        german = await public.post("/forms/contact", data={**bad, "lang": "de"}, headers=JSON)
        back = await public.get(as_browser.headers["location"])
    assert as_json.status_code == 422
    assert as_json.json()["detail"] == [
        {"field": "email", "code": "invalid_email",
         "message": "This is not a valid e-mail address."},
        {"field": "message", "code": "required", "message": "This field is required."}]
    location = httpx.URL(as_browser.headers["location"])
    assert location.path == "/forms/contact" and location.params["lang"] == "en"
    assert location.params["error.message"] == "This field is required."
    assert [d["message"] for d in german.json()["detail"]] == [
        "Das ist keine gültige E-Mail-Adresse.", "Bitte füllen Sie dieses Feld aus."]
    page = back.text
    assert '<html lang="en">' in page and "Please check the marked fields." in page
    assert ('aria-describedby="gwf-message-error"' in page
            and '<span id="gwf-message-error" class="error">This field is required.</span>'
            in page)
    assert await Ticket.all().count() == 0


@sqlite_only
async def test_the_ticket_takes_the_language_asked_for(api: Api, config: Config) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        english = await public.post("/forms/contact", data={**FIELDS, "lang": "en"})
        plain = await public.post("/forms/contact", data=FIELDS, headers=JSON)
    assert english.status_code == 303
    assert english.headers["location"] == "/forms/contact/thanks?lang=en"
    tickets = await Ticket.all().order_by("id")
    assert [t.language for t in tickets] == ["en", None]  # nobody asked: the contact's decides
    confirmation = await Outbox.get(ticket_id=tickets[0].id, event="ticket_created")
    assert confirmation.language == "en"  # the confirmation mail speaks the page's language
    info = await Outbox.get(ticket_id=tickets[0].id, event="form_submitted")
    assert info.language == "de" and "Formular Kontakt: Lieferung" in info.subject
    assert plain.status_code == 201


@sqlite_only
async def test_refusal_pages_in_the_visitors_language(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        missing = await public.get("/forms/nope", headers={"Accept-Language": "en"})
        german = await public.post("/forms/nope", data=FIELDS)
        typed = await public.post("/forms/contact", content=b"x",
                                  headers={"Content-Type": "text/plain",
                                           "Accept-Language": "en"})
    assert missing.status_code == 404 and '<html lang="en">' in missing.text
    assert "The form could not be sent" in missing.text and "no such form" in missing.text
    assert german.status_code == 404 and "Dieses Formular gibt es nicht." in german.text
    assert typed.status_code == 415 and "could not be read" in typed.text


@pytest.fixture
def edited(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    shutil.copytree(SKELETON, root)
    return root


@sqlite_only
async def test_merchant_edits_apply_and_a_broken_edit_falls_back(
    make_config: Callable[..., Config], edited: Path
) -> None:
    from gatewayd import daemon

    page = edited / "_form_page" / "de.html"
    page.write_text(page.read_text("utf-8").replace("Senden", "Abschicken"), "utf-8")
    (edited / "_form_thanks" / "de.html").write_text("<p>{{ nope }}</p>", "utf-8")
    messages = edited / "_form_messages" / "de.txt"
    messages.write_text(messages.read_text("utf-8").replace(
        "required = Bitte füllen Sie dieses Feld aus.", "required = Pflichtangabe"), "utf-8")
    config = bilingual(make_config, edited, language="de")
    async with daemon.start(config) as runtime, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{runtime.http_port}"
    ) as public:
        form = (await public.get("/forms/contact", headers={"Accept-Language": "en"})).text
        thanks = await public.get("/forms/contact/thanks")
        error = await public.post("/forms/contact", data={"email": "a@b.example"}, headers=JSON)
    assert ">Abschicken</button>" in form and '<html lang="de">' in form  # the form's own
    assert 'name="lang"' not in form  # a form with its own language needs no field for it
    assert thanks.status_code == 200 and "Vielen Dank" in thanks.text  # the built-in page
    assert error.json()["detail"][0]["message"] == "Pflichtangabe"
    found = {p.key: p for p in form_problems(config)}
    assert "nope" in found["templates_dir/_form_thanks/de.html"].message
    assert found["templates_dir/_form_thanks/de.html"].severity == "error"


@sqlite_only
async def test_a_templates_dir_without_form_templates_still_serves_forms(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    from gatewayd import daemon

    old = tmp_path / "old-templates"
    shutil.copytree(SKELETON, old, ignore=shutil.ignore_patterns("_form_*"))
    config = bilingual(make_config, old)
    async with daemon.start(config) as runtime, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{runtime.http_port}"
    ) as public:
        page = await public.get("/forms/contact", headers={"Accept-Language": "en"})
        sent = await public.post("/forms/contact", data=FIELDS, headers=JSON)
        info = await Outbox.get(event="form_submitted")
    assert page.status_code == 200 and "(required)" in page.text
    assert sent.status_code == 201
    assert info.status != "failed" and "Formular Kontakt" in info.subject  # built: sendable
    body = email.message_from_string(info.content, policy=email.policy.default)
    assert "Über das Formular „Kontakt“" in body.get_content()
    warnings = {p.key for p in form_problems(config) if p.severity == "warning"}
    assert {"templates_dir/_form_page", "templates_dir/_form_info",
            "templates_dir/_form_messages"} <= warnings


@sqlite_only
def test_check_reports_form_template_problems(make_config: Callable[..., Config],
                                              edited: Path) -> None:
    (edited / "_form_page" / "en.html").unlink()  # missing translation
    (edited / "_form_info" / "de.txt").write_text("Ticket $TicketId: {{ TicketTitle }}",
                                                  "utf-8")  # a plentymarkets look-alike
    (edited / "_form_messages" / "en.txt").write_text(
        "required = Required\nrequierd = typo\ntoo_long = at most {{ maximum }}\n", "utf-8")
    (edited / "_form_error" / "de.html").write_text("{% if %}", "utf-8")
    config = bilingual(make_config, edited, fields=[
        {"name": "email", "type": "email", "required": True, "label": {"de": "E-Mail"}},
        {"name": "lang", "type": "text"}])
    found: dict[str, list[Any]] = {}
    for problem in form_problems(config):
        found.setdefault(problem.key, []).append(problem)
    (missing,) = found["templates_dir/_form_page/en.html"]
    assert missing.severity == "warning" and "visitors get 'de'" in missing.message
    (plenty,) = found["templates_dir/_form_info/de.txt"]
    assert plenty.severity == "error" and "{{ TicketID }}" in plenty.fix
    catalogue = {p.message.split(" ")[0]: p for p in found["templates_dir/_form_messages/en.txt"]}
    assert catalogue["no"].severity == "warning" and "attach_required" in catalogue["no"].message
    assert catalogue["unknown"].severity == "warning" and "requierd" in catalogue["unknown"].message
    too_long = catalogue["too_long:"]
    assert too_long.severity == "error" and "maximum" in too_long.message
    (syntax,) = found["templates_dir/_form_error/de.html"]
    assert syntax.severity == "error" and "line 1" in syntax.message
    (label,) = found["forms[0](contact).fields[0](email).label"]
    assert label.severity == "warning" and "'en'" in label.message
    assert found["forms[0](contact).fields"][0].severity == "warning"  # a field named lang


@sqlite_only
def test_check_is_clean_for_the_shipped_templates(config: Config) -> None:
    assert form_problems(config) == []


@sqlite_only
def test_language_keys_must_be_language_codes(make_config: Callable[..., Config]) -> None:
    from gatewayd.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        bilingual(make_config, language="Deutsch")
    (problem,) = caught.value.problems
    assert problem.key == "forms[0](contact).language" and '"de"' in problem.fix
    with pytest.raises(ConfigError) as caught:
        make_config(merchant_language="EN")
    assert caught.value.problems[0].key == "merchant_language"
