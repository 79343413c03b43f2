"""Attachment names: one sanitiser for mail attachments and form uploads, and downloads that a
browser never renders as the API's own page."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gatewayd.config import Config
from gatewayd.ingest import forms as logic
from gatewayd.ingest.parse import parse_mail
from gatewayd.store.attachments import safe_filename
from gatewayd.store.models import Attachment, Message
from tests.conftest import Api
from tests.test_forms import JSON, _fields, form_config

NAMES = [
    ("../../../../tmp/x.txt", "_.._.._.._tmp_x.txt"),
    ("..\\..\\windows\\win.ini", "_.._windows_win.ini"),
    ("/etc/passwd", "_etc_passwd"),
    ("..", "attachment"),
    ("", "attachment"),
    ("  .htaccess.txt ", "htaccess.txt"),
    ("a\r\nContent-Type: text/html\r\n.txt", "aContent-Type: text_html.txt"),
    ("Rechnung März 2026.pdf", "Rechnung März 2026.pdf"),
    ("x\x00y\u2028z.pdf", "xyz.pdf"),
]


@pytest.mark.parametrize(("given", "expected"), NAMES)
def test_safe_filename(given: str, expected: str) -> None:
    assert safe_filename(given) == expected


def test_long_name_is_cut_to_the_column_keeping_its_extension() -> None:
    name = safe_filename("a" * 400 + ".pdf")
    assert len(name) == 255 and name.endswith(".pdf")


def test_mail_attachment_and_form_upload_get_the_same_name() -> None:
    hostile = "..\\../evil/../x.txt"
    raw = ("From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           "Content-Type: text/plain\r\n\r\nHallo\r\n--b\r\n"
           f'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="{hostile}"'
           "\r\n\r\ndata\r\n--b--\r\n").encode()
    from_mail = parse_mail(raw).attachments[0].filename
    posted = logic.PostedForm({"email": "a@example.org", "message": "m"},
                              (logic.UploadedFile("file", hostile, "text/plain", b"data"),))
    form = form_config_value()
    submission = logic.validate(form, posted)
    assert isinstance(submission, logic.Submission), submission
    assert from_mail == submission.files[0].filename == safe_filename(hostile)
    assert from_mail == "_.._evil_.._x.txt"


def form_config_value() -> logic.Form:
    return logic.Form.model_validate({
        "name": "contact", "ticket": {"type": "Kundenanfrage", "status": "Neu"},
        "fields": [{"name": "email", "type": "email", "required": True},
                   {"name": "message", "type": "message"},
                   {"name": "file", "type": "attachment"}]})


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return form_config(make_config)


async def test_form_upload_name_is_sanitised_and_download_is_safe(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post(
            "/forms/contact", data=_fields(), headers=JSON,
            files={"file": ("../../../../tmp/x.txt", b"hello", "text/plain")})
    assert response.status_code == 201, response.text
    message = await Message.get(ticket_id=response.json()["ticket_id"])
    attachment = await Attachment.get(message_id=message.id)
    assert attachment.filename == "_.._.._.._tmp_x.txt"
    download = await api.client.get(f"/api/attachments/{attachment.id}")
    assert download.status_code == 200 and download.content == b"hello"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "../" not in disposition
    assert 'filename="_.._.._.._tmp_x.txt"' in disposition
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]


async def test_download_of_an_old_row_with_a_path_in_its_name_is_cleaned(api: Api) -> None:
    """Rows stored before names were sanitised are offered without their path, and a non-ASCII
    name travels as RFC 6266 filename* with an ASCII fallback."""
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", data=_fields(), headers=JSON,
                                     files={"file": ("a.txt", b"x", "text/plain")})
    message = await Message.get(ticket_id=response.json()["ticket_id"])
    await Attachment.filter(message_id=message.id).update(filename='../Grüße "1".txt')
    attachment = await Attachment.get(message_id=message.id)
    download = await api.client.get(f"/api/attachments/{attachment.id}")
    disposition = download.headers["content-disposition"]
    assert disposition == ("attachment; filename=\"_Gr__e _1_.txt\"; "
                           "filename*=UTF-8''_Gr%C3%BC%C3%9Fe%20%221%22.txt")
