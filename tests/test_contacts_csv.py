"""`gatewayd contacts import|export` end to end on SQLite and PostgreSQL: bad rows by line number,
good rows kept, the export round trip, and re-import updating instead of duplicating."""

from __future__ import annotations

import asyncio
import csv
import io
from importlib import resources
from pathlib import Path

import pytest

from gatewayd.cli import main as cli_main
from gatewayd.ops.contacts_csv import COLUMNS, parse_csv
from gatewayd.store.db import open_database
from gatewayd.store.models import Contact

GOOD_AND_BAD = ",".join(COLUMNS) + """
K-1,Anna,Berg,,anna@example.org,,,de,1,2024-02-01
K-2,Bob,Smith,Smith Ltd,not-an-address,,,en,1,
K-3,Clara,Schmidt,,clara@example.org,,,de,maybe,
,,Nobody,,,,,,1,
K-1,Anna,Twice,,anna2@example.org,,,de,1,
K-4,"Dörte, die Zweite",Müller,"Müller & Söhne",doerte@example.org,doerte@firma.example,,de,0,\
15.03.2023
,Eve,Only-Mail,,eve@example.org,,,EN,1,2025-01-31
"""


def write_config(directory: Path, db_url: str) -> Path:
    """The `gatewayd init` config pointed at the test database (no secrets needed here)."""
    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    text = text.replace('database_url = "sqlite://var/gatewayd.sqlite3"',
                        f'database_url = "{db_url}"')
    templates = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))
    text = text.replace('templates_dir = "templates"', f'templates_dir = "{templates}"')
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gatewayd.toml"
    path.write_text(text, "utf-8")
    return path


async def cli(*argv: str) -> int:
    """Run the CLI in a thread: it starts its own event loop like the real command."""
    return await asyncio.to_thread(cli_main, list(argv))


async def test_import_export_round_trip(tmp_path: Path, db_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path / "site", db_url))
    source = tmp_path / "contacts.csv"
    source.write_text(GOOD_AND_BAD, "utf-8")

    assert await cli("--config", config, "contacts", "import", str(source)) == 1
    out, err = capsys.readouterr()
    assert f"{source}:3: email_private 'not-an-address' is not an e-mail address" in err
    assert f"{source}:4: active must be 1 or 0" in err
    assert f"{source}:5: a row needs a customer number or an e-mail address" in err
    assert f"{source}:6: customer number 'K-1' is already on line 2" in err
    assert "3 created, 0 updated, 0 unchanged, 4 bad row(s) skipped" in out

    exported = tmp_path / "export.csv"
    assert await cli("--config", config, "contacts", "export", "-o", str(exported)) == 0
    rows = list(csv.reader(io.StringIO(exported.read_text("utf-8"))))
    assert tuple(rows[0]) == COLUMNS
    by_number = {r[0]: r for r in rows[1:]}
    assert set(by_number) == {"K-1", "K-4", ""}
    assert by_number["K-4"] == ["K-4", "Dörte, die Zweite", "Müller", "Müller & Söhne",
                                "doerte@example.org", "doerte@firma.example", "", "de", "0",
                                "2023-03-15"]
    assert by_number[""][2] == "Only-Mail" and by_number[""][7] == "en"

    # Re-importing the export changes nothing and duplicates nothing.
    assert await cli("--config", config, "contacts", "import", str(exported)) == 0
    out, _ = capsys.readouterr()
    assert "0 created, 0 updated, 3 unchanged, 0 bad row(s)" in out

    # Edited in a spreadsheet: a changed name, a deactivated contact, a fixed bad row.
    edited = exported.read_text("utf-8").replace("Anna,Berg", "Anna,Berg-Lind")
    edited = edited.replace("Only-Mail,,eve@example.org,,,en,1",
                            "Only-Mail,,eve@example.org,,,en,0")
    edited += "K-2,Bob,Smith,Smith Ltd,bob@smith.example,,,en,1,\n"
    exported.write_text(edited, "utf-8")
    assert await cli("--config", config, "contacts", "import", str(exported)) == 0
    out, _ = capsys.readouterr()
    assert "1 created, 2 updated, 1 unchanged, 0 bad row(s)" in out

    async with open_database(db_url):
        assert await Contact.all().count() == 4
        anna = await Contact.get(number="K-1")
        assert anna.last_name == "Berg-Lind" and anna.email_private == "anna@example.org"
        assert anna.registered_at is not None and anna.registered_at.year == 2024
        eve = await Contact.get(email_private="eve@example.org")
        assert eve.active is False and eve.number is None


def test_german_spreadsheet_export_is_read() -> None:
    text = ("\ufeffKundennummer;Vorname;Nachname;Firma;E-Mail;Sprache;Aktiv;Registriert\n"
            "1001;Jörg;Weiß;;joerg@example.de;de;1;01.02.2020\n"
            "1002;Kai;;;kai@example;de;ja;\n")
    rows, errors = parse_csv(text)
    assert [r.values["number"] for r in rows] == ["1001"]
    assert rows[0].values["first_name"] == "Jörg" and rows[0].values["active"] is True
    assert errors and errors[0].line == 3 and "kai@example" in errors[0].message


def test_header_problems_are_reported_on_line_one() -> None:
    assert parse_csv("")[1][0].line == 1
    _rows, errors = parse_csv("number,shoe_size\n1,44\n")
    assert errors[0].line == 1 and "shoe_size" in errors[0].message
    _rows, errors = parse_csv("first_name,last_name\nA,B\n")
    assert "number or an e-mail column" in errors[0].message
    rows, errors = parse_csv('number,first_name\n1,"multi\nline"\n2,x,y\n3,ok\n')
    assert [r.line for r in rows] == [2, 5] and errors[0].line == 4
