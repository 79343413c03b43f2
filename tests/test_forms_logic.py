"""The pure parts of shop forms: parsing, validation, linking, protections, rendering."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gatewayd.config import Config, Form, config_from_dict
from gatewayd.ingest import form_guards as guards
from gatewayd.ingest import form_pages as pages
from gatewayd.ingest import forms as logic
from gatewayd.ingest.form_texts import FormTexts, builtin_templates
from gatewayd.routing.keywords import find_keywords
from tests.conftest import skeleton_data

FORM = Form.model_validate({
    "name": "contact",
    "ticket": {"type": "Kundenanfrage", "status": "Neu"},
    "allowed_origins": ["https://shop.example"],
    "fields": [
        {"name": "email", "type": "email", "required": True, "label": "E-Mail"},
        {"name": "name", "type": "name", "label": "Name"},
        {"name": "subject", "type": "subject"},
        {"name": "message", "type": "message", "required": True, "label": "Nachricht"},
        {"name": "order", "type": "order_id"},
        {"name": "file", "type": "attachment"},
    ],
})


def _valid(**values: str) -> logic.Submission:
    result = logic.validate(FORM, logic.PostedForm(values))
    assert isinstance(result, logic.Submission), result
    return result


def test_validate_normalises_and_keeps_the_form_order() -> None:
    result = _valid(message="Hallo\r\nWelt \x00", email=" Erika@Example.ORG ", name="  Erika \n M ",
                    order="#42", unknown="ignored")
    assert result.email == "erika@example.org"
    assert result.order_id == 42
    assert result.message == "Hallo\nWelt"
    assert [f[0] for f in result.fields] == ["email", "name", "message", "order"]
    assert result.name == "Erika M"
    assert result.title == "Hallo"


def test_order_numbers_beyond_any_row_id_are_valid_input() -> None:
    # Validation only checks the spelling; the look-up decides that no such order exists.
    assert _valid(email="a@b.example", message="m", order="99999999999999999999").order_id == (
        99999999999999999999)
    assert _valid(email="a@b.example", message="m", order="# 0042").order_id == 42
    errors = logic.validate(FORM, logic.PostedForm({"email": "a@b.example", "message": "m",
                                                    "order": "9" * 65}))
    assert errors == [logic.FieldError("order", "at most 32 characters")]
    long_form = FORM.model_copy(update={"fields": [
        f.model_copy(update={"max_length": 10_000}) if f.type == "order_id" else f
        for f in FORM.fields]})
    errors = logic.validate(long_form, logic.PostedForm({"email": "a@b.example", "message": "m",
                                                         "order": "9" * 5000}))
    assert errors == [logic.FieldError("order", "an order number has at most 64 digits")]


def test_validate_reports_every_field() -> None:
    errors = logic.validate(FORM, logic.PostedForm({"email": "x@", "order": "A-1",
                                                    "subject": "s" * 201}))
    assert isinstance(errors, list)
    assert {(e.field, e.message) for e in errors} == {
        ("email", "not a valid e-mail address"),
        ("subject", "at most 200 characters"),
        ("message", "this field is required"),
        ("order", "an order number has only digits"),
    }


def test_attachment_rule_needs_allowed_extension_and_type() -> None:
    assert logic.attachment_problem("rechnung.pdf", "application/pdf") is None
    assert logic.attachment_problem("foto.JPG", "application/octet-stream") is None
    assert "not accepted" in (logic.attachment_problem("tool.exe", "application/pdf") or "")
    assert "x-msdownload" in (logic.attachment_problem("a.pdf", "application/x-msdownload") or "")
    assert logic.stored_content_type("foto.jpg", "application/octet-stream") == "image/jpeg"


def test_title_falls_back_to_message_then_form() -> None:
    assert _valid(email="a@b.example", message="\n\n" + "w" * 100).title == "w" * 79 + "…"
    assert _valid(email="a@b.example", message="x", subject="Frage").title == "Frage"


def test_render_submission_is_readable() -> None:
    text = logic.render_submission(FORM, _valid(email="a@b.example", name="Erika",
                                                message="Zeile 1\nZeile 2"), ["a note"])
    assert text == ("Form: contact\nE-Mail: a@b.example\nName: Erika\n\nNachricht:\n"
                    "Zeile 1\nZeile 2\n\nNote: a note\n")


@pytest.mark.parametrize("contacts, order, expected", [
    ([], None, (None, None)),
    ([logic.ContactFacts(7, False), logic.ContactFacts(9, True)], None, (9, None)),
    ([logic.ContactFacts(7, True), logic.ContactFacts(3, True)], None, (3, None)),
    # The order's contact wins when it uses the address too.
    ([logic.ContactFacts(3, True), logic.ContactFacts(7, True)],
     logic.OrderFacts(50, 7, None, None), (7, 50)),
    # An order whose billing address is this one links, and brings its contact.
    ([], logic.OrderFacts(50, 11, "a@b.example", None), (11, 50)),
    ([logic.ContactFacts(3, True)], logic.OrderFacts(50, 11, None, "a@b.example"), (3, 50)),
    # Someone else's order is not linked.
    ([logic.ContactFacts(3, True)], logic.OrderFacts(50, 11, "x@y.example", None), (3, None)),
])
def test_decide_links(contacts: list[logic.ContactFacts], order: logic.OrderFacts | None,
                      expected: tuple[int | None, int | None]) -> None:
    links = logic.decide_links("a@b.example", contacts, order, 50 if order else None)
    assert (links.contact_id, links.order_id) == expected


def test_decide_links_notes_a_missing_order() -> None:
    links = logic.decide_links("a@b.example", [], None, 99)
    assert links.order_id is None and links.notes == ("order 99 does not exist (not linked)",)


def test_client_ip_trusts_forwarded_for_only_from_proxies() -> None:
    trusted = ["10.0.0.0/8"]
    assert guards.client_ip("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"
    assert guards.client_ip("10.0.0.2", "1.2.3.4", trusted) == "1.2.3.4"
    assert guards.client_ip("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.1", trusted) == "1.2.3.4"
    assert guards.client_ip("10.0.0.2", "garbage", trusted) == "10.0.0.2"
    assert guards.client_ip("10.0.0.2", None, trusted) == "10.0.0.2"


def test_origin_rules() -> None:
    own = "http://127.0.0.1:8080"
    assert guards.origin_problem(FORM, "https://shop.example", "cross-site", own) is None
    assert guards.origin_problem(FORM, own, "same-origin", own) is None
    assert guards.origin_problem(FORM, None, None, own) is None  # server-to-server
    assert guards.origin_problem(FORM, "https://evil.example", None, own)
    assert guards.origin_problem(FORM, None, "cross-site", own)
    assert guards.origin_problem(FORM, "null", None, own)


def test_signature_window_and_constant_time_compare() -> None:
    body = b"email=a%40b.example"
    good = guards.sign("k", "1000", body)
    assert guards.signature_problem("k", "1000", good, body, 1000 + 300, 300) is None
    assert "300 s" in (guards.signature_problem("k", "1000", good, body, 1000 + 301, 300) or "")
    assert guards.signature_problem("k", "1000", good, body + b"x", 1000, 300)
    assert guards.signature_problem("k", "soon", good, body, 1000, 300)
    assert guards.signature_problem("k", None, None, body, 1000, 300)


@pytest.mark.parametrize("stamp", ["1" + "0" * 400, "9" * 5000, "1_000", " 1000", "-1000", "²",
                                   "1e3", "0x3e8"])
def test_a_timestamp_that_is_not_plain_unix_seconds_is_refused_not_raised(stamp: str) -> None:
    body = b"email=a%40b.example"
    problem = guards.signature_problem("k", stamp, guards.sign("k", stamp, body), body, 1000.0, 300)
    assert problem == "x-gatewayd-timestamp must be Unix seconds"


def test_rate_limiter_slides() -> None:
    limiter = guards.RateLimiter()
    key = ("contact", "1.2.3.4")
    assert [limiter.allow(key, 2, 60, now=t) for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow(("contact", "5.6.7.8"), 2, 60, now=2)
    assert limiter.allow(key, 2, 60, now=60.5)  # the first hit left the window
    assert limiter.allow(key, 0, 60, now=61)  # 0 switches the limit off


def test_replay_cache() -> None:
    cache = guards.ReplayCache()
    assert cache.first_use("sha256=ab", 0, 600)
    assert not cache.first_use("SHA256=AB", 10, 600)
    assert cache.first_use("sha256=ab", 601, 600)


def _config(tmp_path: Path, **top: object) -> Config:
    data = skeleton_data()
    data["http"] = {"listen": "127.0.0.1:0", "api_tokens": ["t" * 20]}
    data["forms"] = [FORM.model_dump(mode="json", exclude_none=True)]
    data.update(top)
    return config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)


def test_form_html_escapes_and_hides_honeypot(tmp_path: Path) -> None:
    form = FORM.model_copy(update={"fields": [
        *FORM.fields[:1],
        FORM.fields[1].model_copy(update={"label": "<b>Name</b>"}),
    ]})
    texts = FormTexts(_config(tmp_path), builtin_templates())
    page = pages.render_form_html(texts, form, "en", "/forms/contact", [("email", "<bad>")])
    assert "&lt;b&gt;Name&lt;/b&gt;" in page and "<b>" not in page
    assert "&lt;bad&gt;" in page and 'role="alert"' in page
    assert "multipart" not in page
    assert 'name="website" type="text" tabindex="-1" autocomplete="off"' in page


def test_info_mail_is_valid_mime_with_encoded_subject(tmp_path: Path) -> None:
    from gatewayd.ingest.form_ticket import info_mail

    data = skeleton_data()
    data["http"] = {"listen": "127.0.0.1:0", "api_tokens": ["t" * 20]}
    data["forms"] = [FORM.model_dump(mode="json", exclude_none=True)]
    data["accounts"][0]["smtp"]["sender_name"] = "Shop Kundenservice Müller"
    data["backend_ticket_url"] = "https://backend.shop.example/tickets/{id}"
    config = config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)
    submission = _valid(email="a@b.example", subject="Größe passt nicht — Umtausch?",
                        message="Grüße\n" + "lange Zeile " * 20, order="77")
    links = logic.decide_links("a@b.example", [], None, 77)
    message = info_mail(config, FORM, 42, submission, links, "en")
    reparsed = email.message_from_string(message.content.replace("\r\n", "\n"),
                                         policy=email.policy.default)
    assert str(reparsed["Subject"]) == message.subject == (
        "[Ticket-ID 42] Formular contact: Größe passt nicht — Umtausch?")
    # The routing keyword: the merchant's reply to the info mail lands on ticket 42.
    assert find_keywords(str(reparsed["Subject"]), "").ticket_id == 42
    assert reparsed["From"].addresses[0].display_name == "Shop Kundenservice Müller"
    assert reparsed["From"].addresses[0].addr_spec == config.accounts[0].address
    assert str(reparsed["To"]) == "owner@shop.example"
    assert reparsed["Auto-Submitted"] == "auto-generated"
    assert reparsed["X-Gatewayd-Ticket"] == "42"
    assert reparsed["Message-ID"] == message.message_id
    assert message.message_id.startswith("<t42.")
    assert isinstance(reparsed, EmailMessage)
    body = reparsed.get_content()
    # The merchant's language (default_language de), whatever the form's (en) was.
    assert body.startswith("Über das Formular „contact“ kam eine Nachricht; sie ist jetzt "
                           "Ticket 42.\nIm Ticketsystem öffnen: "
                           "https://backend.shop.example/tickets/42\n")
    assert "\nE-Mail: a@b.example\nsubject: Größe passt nicht — Umtausch?\n" in body
    assert "\n\nNachricht:\nGrüße\nlange Zeile lange Zeile" in body
    assert "Hinweis: Den Auftrag 77 gibt es nicht; er wurde nicht verknüpft." in body
    english = info_mail(config.model_copy(update={"merchant_language": "en"}), FORM, 42,
                        submission, links, "de")
    assert "[Ticket-ID 42] Form contact: " in english.subject
    assert "Note: order 77 does not exist; it was not linked." in english.content
    assert all(len(line) <= 78 for line in message.content.split("\r\n"))
    assert "\n" not in message.content.replace("\r\n", "")


def test_info_mail_title_cannot_add_headers(tmp_path: Path) -> None:
    from gatewayd.ingest.form_ticket import info_mail

    data = skeleton_data()
    data["http"] = {"listen": "127.0.0.1:0", "api_tokens": ["t" * 20]}
    config = config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)
    # A title cannot hold a line break after validation; info_mail cleans it anyway.
    submission = logic.Submission(form="contact", email="a@b.example", name=None,
                                  subject="Hallo\r\nBcc: victim@example.net", message="m",
                                  order_id=None, fields=())
    message = info_mail(config, FORM, 7, submission, logic.Links(None, None), "de")
    reparsed = email.message_from_string(message.content, policy=email.policy.default)
    assert reparsed["Bcc"] is None
    assert str(reparsed["Subject"]) == (
        "[Ticket-ID 7] Formular contact: Hallo Bcc: victim@example.net")


def test_config_checks_the_protection_keys(tmp_path: Path) -> None:
    from gatewayd.config import ConfigError

    data = skeleton_data()
    data["http"] = {"listen": "127.0.0.1:0", "api_tokens": ["t" * 20]}
    form = FORM.model_dump(mode="json", exclude_none=True)
    data["forms"] = [{**form, "trusted_proxies": ["10.0.0.0/8", "proxy.example"],
                      "allowed_origins": ["https://shop.example/kontakt"], "honeypot": "email",
                      "require_signature": True, "success_url": "danke.html"}]
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)
    keys = {p.key for p in caught.value.problems}
    base = "forms[0](contact)"
    assert {f"{base}.trusted_proxies[1]", f"{base}.allowed_origins[0]", f"{base}.honeypot",
            f"{base}.require_signature", f"{base}.success_url"} <= keys

    # The HMAC secret comes from a file relative to the configuration.
    (tmp_path / "form.secret").write_text("from-the-file\n")
    data["forms"] = [{**form, "hmac_secret_file": "form.secret", "require_signature": True}]
    config = config_from_dict(data, tmp_path / "gatewayd.toml")
    secret = config.forms[0].hmac_secret
    assert secret is not None and secret.get_secret_value() == "from-the-file"
    data["forms"] = [{**form, "hmac_secret_file": "missing.secret"}]
    with pytest.raises(ConfigError) as missing:
        config_from_dict(data, tmp_path / "gatewayd.toml")
    assert any(p.key == f"{base}.hmac_secret_file" for p in missing.value.problems)
