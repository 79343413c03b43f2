"""A real browser fills in `GET /forms/contact` and submits it (headless Chromium), in German
and in English as its Accept-Language asks: the page's language, its labels as a screen reader
reads them, a refusal sent back beside the field (aria-describedby), the thank-you page.

Chromium is driven over the DevTools protocol through `--remote-debugging-pipe` (JSON messages
separated by NUL on file descriptors 3 and 4), so no extra client library is needed. Skips, saying
so, only when Debian's `chromium` is not installed; `.ci/run` installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.store.models import Attachment, Message, Ticket
from tests.conftest import Api
from tests.test_forms import form_config
from tests.test_forms_i18n import BILINGUAL_FIELDS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return form_config(make_config, success_url=None, title={"de": "Kontakt", "en": "Contact"},
                       fields=FIELDS)


FIELDS = [
    *BILINGUAL_FIELDS,
    {"name": "order", "type": "order_id", "label": {"de": "Auftragsnummer", "en": "Order no."}},
    {"name": "file", "type": "attachment", "label": {"de": "Datei", "en": "File"}},
]
# What each language's pages say (the shipped templates).
WORDS = {
    "de": {"required": "E-Mail (Pflichtfeld)", "error": "Bitte füllen Sie dieses Feld aus.",
           "alert": "Bitte prüfen Sie die markierten Felder.",
           "thanks": "Wir haben Ihre Nachricht erhalten", "accept": "de-DE,de;q=0.9,en;q=0.5"},
    "en": {"required": "E-mail (required)", "error": "This field is required.",
           "alert": "Please check the marked fields.",
           "thanks": "received your message", "accept": "en-GB,en;q=0.9,de;q=0.3"},
}


class DevTools:
    """A blocking DevTools-protocol client over Chromium's debugging pipe (used from a thread)."""

    def __init__(self, profile: Path, extra_args: Sequence[str] = ()):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", *extra_args,
                "about:blank"]
        # bash puts our pipe ends on the descriptors 3 and 4 Chromium expects (dash cannot
        # redirect descriptors above 9).
        command = f"exec {shlex.join(args)} 3<&{to_browser_r} 4>&{from_browser_w}"
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", command], pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, session: str | None = None, timeout: float = 30,
             **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(tmp_path / "chromium-profile")
    try:
        yield devtools
    finally:
        devtools.close()


class Page:
    """One browser tab: navigate, evaluate JavaScript, type like a person."""

    def __init__(self, devtools: DevTools, accept_language: str):
        self.devtools = devtools
        target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = devtools.call("Target.attachToTarget", targetId=target,
                                     flatten=True)["sessionId"]
        devtools.call("Page.enable", self.session)
        # The browser's language, sent as Accept-Language like a visitor's browser does.
        agent = devtools.call("Browser.getVersion")["userAgent"]
        devtools.call("Network.setUserAgentOverride", self.session, userAgent=agent,
                      acceptLanguage=accept_language)

    def open(self, url: str) -> None:
        self.devtools.call("Page.navigate", self.session, url=url)
        self.devtools.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.devtools.call("Runtime.evaluate", self.session, expression=expression,
                                    returnByValue=True)
        return result["result"].get("value")

    def type(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.devtools.call("Input.insertText", self.session, text=text)

    def submit(self) -> None:
        self.evaluate("document.querySelector('button[type=submit]').click()")
        self.devtools.wait_event("Page.loadEventFired")


def _fill_and_submit(devtools: DevTools, url: str, upload: Path,
                     accept_language: str) -> dict[str, Any]:
    page = Page(devtools, accept_language)
    page.open(url)
    before = {
        "lang": page.evaluate("document.documentElement.lang"),
        # the text a screen reader announces for the input: its <label>
        "label": page.evaluate("document.getElementById('gwf-email').labels[0].textContent"),
    }
    # First a message of blanks: the browser lets it through (required is met), the server
    # refuses it and sends the browser back to the form with the error beside the field.
    for selector, text in (("#gwf-email", "erika@example.org"), ("#gwf-name", "Erika Muster"),
                           ("#gwf-subject", "Frage zum Artikel"), ("#gwf-message", "   ")):
        page.type(selector, text)
    page.submit()
    refused = {
        "lang": page.evaluate("document.documentElement.lang"),
        "alert": page.evaluate("document.querySelector('[role=alert]')?.textContent"),
        "invalid": page.evaluate(
            "document.getElementById('gwf-message').getAttribute('aria-invalid')"),
        "described": page.evaluate(
            "document.getElementById(document.getElementById('gwf-message')"
            ".getAttribute('aria-describedby'))?.textContent"),
    }
    for selector, text in (("#gwf-email", "erika@example.org"), ("#gwf-name", "Erika Muster"),
                           ("#gwf-subject", "Frage zum Artikel"),
                           ("#gwf-message", "Ist der Artikel wieder lieferbar?")):
        page.type(selector, text)
    document = devtools.call("DOM.getDocument", page.session)["root"]["nodeId"]
    file_input = devtools.call("DOM.querySelector", page.session, nodeId=document,
                               selector="#gwf-file")["nodeId"]
    devtools.call("DOM.setFileInputFiles", page.session, nodeId=file_input, files=[str(upload)])
    honeypot_visible = page.evaluate(
        "(() => { const r = document.querySelector('[name=website]').getBoundingClientRect();"
        " return r.right > 0 && r.bottom > 0 && r.width > 1; })()")
    page.submit()
    return {
        "before": before, "refused": refused,
        "href": page.evaluate("location.href"),
        "lang": page.evaluate("document.documentElement.lang"),
        "thanks": page.evaluate("document.getElementById('gatewayd-thanks')?.textContent"),
        "honeypot_visible": honeypot_visible,
    }


@pytest.mark.parametrize("language", ["de", "en"])
async def test_chromium_fills_the_form_and_lands_on_the_success_page(
    api: Api, browser: DevTools, tmp_path: Path, language: str
) -> None:
    words = WORDS[language]
    upload = tmp_path / "lieferschein.pdf"
    upload.write_bytes(b"%PDF-1.4\n% test\n")
    result = await asyncio.to_thread(_fill_and_submit, browser, f"{api.base_url}/forms/contact",
                                     upload, words["accept"])
    assert result["before"] == {"lang": language, "label": words["required"]}
    assert result["refused"] == {"lang": language, "alert": words["alert"], "invalid": "true",
                                 "described": words["error"]}
    assert result["href"] == f"{api.base_url}/forms/contact/thanks?lang={language}"
    assert result["lang"] == language
    assert result["thanks"] and words["thanks"] in result["thanks"]
    assert result["honeypot_visible"] is False
    tickets = await Ticket.all()
    assert len(tickets) == 1
    ticket = tickets[0]
    assert (ticket.source, ticket.type, ticket.reply_address, ticket.language) == (
        "form", "Beschwerde", "erika@example.org", language)
    assert ticket.title == "Frage zum Artikel"
    message = await Message.get(ticket_id=ticket.id)
    assert "Ist der Artikel wieder lieferbar?" in message.text
    attachment = await Attachment.get(message_id=message.id)
    assert (attachment.filename, attachment.content_type) == ("lieferschein.pdf",
                                                              "application/pdf")
