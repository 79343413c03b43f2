"""`gatewayd demo`: the whole loop on loopback prints tickets, threading and diverted mails."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

from gatewayd.demo import ORDER_ID, TEST_RECIPIENT, run_demo


async def test_demo_shows_the_whole_loop(tmp_path: Path) -> None:
    out = io.StringIO()
    facts = await asyncio.wait_for(run_demo(tmp_path, out), 90)
    text = out.getvalue()
    tickets = {t["title"]: t for t in facts["tickets"]}
    assert len(tickets) == 3
    enquiry = tickets["Frage zur Lieferzeit"]
    # the reply naming its Ticket-ID was threaded into the enquiry, not a new ticket
    assert [m["routed_by"] for m in enquiry["messages"]] == ["new_ticket", "ticket_keyword"]
    order = tickets[f"Where is my parcel? Order No. {ORDER_ID}"]
    assert order["order_id"] == ORDER_ID and order["contact_id"] is not None
    auto = tickets["Automatische Antwort: Ich bin nicht im Büro"]
    assert auto["messages"][0]["auto_reply"] is True
    sent = [o for o in facts["outbox"] if o["status"] == "sent"]
    assert sorted(o["intended_to"][0] for o in sent) == ["erika@example.de", "john@example.com"]
    assert all(o["envelope_to"] == [TEST_RECIPIENT] for o in facts["outbox"])
    assert not any(o["status"] == "sent" and o["intended_to"] == ["max@example.de"]
                   for o in facts["outbox"]), "an auto-reply must never get an automatic answer"
    assert facts["smtp"] == [[TEST_RECIPIENT]] * len(sent)
    assert "Wir haben Ihre Anfrage erhalten" in text and "We received your request" in text
    assert f"delivered to {TEST_RECIPIENT}" in text


def test_demo_command_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "demo", "--keep", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "routed by ticket_keyword" in result.stdout
    assert (tmp_path / "demo" / "gatewayd.sqlite3").exists()
