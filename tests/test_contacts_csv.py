"""`gatewayd contacts import|export` end to end on SQLite and PostgreSQL: bad rows by line number,
good rows kept, the export round trip, and re-import updating instead of duplicating."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
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
    rows, errors, _ignored = parse_csv(text)
    assert [r.values["number"] for r in rows] == ["1001"]
    assert rows[0].values["first_name"] == "Jörg" and rows[0].values["active"] is True
    assert errors and errors[0].line == 3 and "kai@example" in errors[0].message


def test_header_problems_are_reported_on_line_one() -> None:
    assert parse_csv("").errors[0].line == 1
    _rows, errors, _ignored = parse_csv("number,shoe_size\n1,44\n", strict=True)
    assert errors[0].line == 1 and "shoe_size" in errors[0].message
    _rows, errors, _ignored = parse_csv("first_name,last_name\nA,B\n")
    assert "number or an e-mail column" in errors[0].message
    rows, errors, _ignored = parse_csv('number,first_name\n1,"multi\nline"\n2,x,y\n3,ok\n')
    assert [r.line for r in rows] == [2, 5] and errors[0].line == 4


def test_a_bad_cell_costs_its_row_only() -> None:
    """An oversized cell ended the reading (the csv module's 128 KiB field limit): the rows
    after it were dropped without a word. Over-long addresses, control characters and an
    address the former pattern took 10 s to refuse are each their row's error."""
    text = ("number,first_name,email_private\n"
            "K13,x,k13@example.org\n"
            f"K14,{'L' * 200_000},k14@example.org\n"
            f"K15,y,{'k' * 320}@example.org\n"
            "K16,z\x00,k16@example.org\n"
            f"K17,w,a@{'.' * 40_000} x\n"
            "K18,v,k18@example.org\n")
    rows, errors, _ignored = parse_csv(text)
    assert [r.values["number"] for r in rows] == ["K13", "K18"]
    assert [(e.line, e.message.split(" ", 1)[0]) for e in errors] == [
        (3, "first_name"), (4, "email_private"), (5, "first_name"), (6, "email_private")]
    assert "longer than 320" in errors[1].message and "control character" in errors[2].message
    assert len(errors[3].message) < 120  # the cell is quoted shortened
    assert csv.field_size_limit() == 131072  # the module's limit is left as it was


# Header rows as the shop systems export them (rows made up). Shopware 6: the "Default
# customer" import/export profile (`;`, its mapped keys); WooCommerce: the users export of the
# Import Export Suite; plentymarkets: a contact export with German column names.
SHOPWARE = (
    "id;salutation;customer_number;first_name;last_name;email;active;guest;customer_group;"
    "language;sales_channel;payment_method;billing_id;billing_salutation;billing_title;"
    "billing_first_name;billing_last_name;billing_company;billing_street;billing_zipcode;"
    "billing_city;billing_country;billing_phone_number;shipping_id;shipping_salutation;"
    "shipping_title;shipping_first_name;shipping_last_name;shipping_company;shipping_street;"
    "shipping_zipcode;shipping_city;shipping_country;shipping_phone_number\n"
    "0189a3f5c1d07c4e9a7e2b3c4d5e6f70;mrs;10001;Jörg;Weiß;joerg@example.de;1;0;"
    "Standard-Kundengruppe;de-DE;Storefront;Rechnung;0189a3f5c1d07c4e9a7e2b3c4d5e6f71;mr;;"
    "Jörg;Weiß;;Hauptstraße 1;10115;Berlin;DE;030 123456;0189a3f5c1d07c4e9a7e2b3c4d5e6f71;"
    "mr;;Jörg;Weiß;;Hauptstraße 1;10115;Berlin;DE;030 123456\n"
)
WOOCOMMERCE = (
    "ID,customer_id,user_login,user_pass,user_nicenname,user_email,user_url,user_registered,"
    "display_name,first_name,last_name,user_status,roles,locale,billing_first_name,"
    "billing_last_name,billing_company,billing_email,billing_phone,billing_address_1,"
    "billing_city,billing_postcode,billing_country,shipping_first_name,shipping_last_name\n"
    "12,12,kim,$P$Bx,kim,kim@example.com,,2023-04-12 10:44:00,Kim,Kim,Lee,0,customer,en_GB,"
    "Kim,Lee,,kim@billing.example,+44 20 7946 0000,1 High Street,London,N1 9GU,GB,Kim,Lee\n"
)
PLENTYMARKETS = (
    "Kontakt-ID;Typ;Anrede;Vorname;Nachname;Firma;E-Mail;E-Mail PayPal;Telefon;Mobil;"
    "Sprache;Kundenklasse;Erstellt am\n"
    "4711;Kunde;Frau;Erika;Mustermann;;erika@example.de;erika.paypal@example.de;"
    "+49 30 901820;;de;Endkunde;01.02.2024 10:00\n"
)


@pytest.mark.parametrize(("text", "expected", "ignored"), [
    (SHOPWARE, {"number": "10001", "first_name": "Jörg", "last_name": "Weiß",
                "email_private": "joerg@example.de", "active": True, "language": "de-de"},
     ["id", "salutation", "guest", "customer_group", "sales_channel", "payment_method",
      "billing_id", "billing_salutation", "billing_title", "billing_first_name"]),
    (WOOCOMMERCE, {"number": "12", "first_name": "Kim", "last_name": "Lee",
                   "email_private": "kim@example.com", "language": "en-gb"},
     ["ID", "user_login", "user_pass", "user_nicenname", "user_url", "display_name",
      "user_status", "roles", "billing_first_name"]),
    (PLENTYMARKETS, {"first_name": "Erika", "last_name": "Mustermann",
                     "email_private": "erika@example.de",
                     "email_paypal": "erika.paypal@example.de", "language": "de"},
     ["Kontakt-ID", "Typ", "Anrede", "Telefon", "Mobil", "Kundenklasse", "Erstellt am"]),
], ids=["shopware", "woocommerce", "plentymarkets"])
def test_shop_exports_import_with_their_extra_columns_named_once(
    text: str, expected: dict[str, object], ignored: list[str]
) -> None:
    rows, errors, skipped = parse_csv(text)
    assert errors == []
    (row,) = rows
    assert {k: row.values.get(k) for k in expected} == expected
    assert skipped[:len(ignored)] == ignored  # in the file's order, each name once
    assert len(skipped) == len(set(skipped))
    _rows, errors, _ = parse_csv(text, strict=True)
    assert errors and all(e.line == 1 for e in errors)
    assert {e.message.split("'")[1] for e in errors} == set(skipped)


def test_a_woocommerce_registration_time_is_read() -> None:
    (row,), _errors, _ = parse_csv(WOOCOMMERCE)
    assert row.values["registered_at"].isoformat() == "2023-04-12T10:44:00+00:00"


def test_two_columns_meaning_the_same_are_named() -> None:
    _rows, errors, _ = parse_csv("email,user_email\na@example.org,b@example.org\n")
    assert "'email', 'user_email'" in errors[0].message and "email_private" in errors[0].message


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cli_import_skips_unknown_columns_and_strict_refuses_them(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path / "site", db_url))
    source = tmp_path / "plenty.csv"
    source.write_text("\ufeff" + PLENTYMARKETS.replace(
        "Erstellt am\n", "Telefon\n").replace("01.02.2024 10:00\n", "030 1\n"), "utf-8")
    assert await cli("--config", config, "contacts", "import", "--strict", str(source)) == 1
    out, err = capsys.readouterr()
    assert f"{source}:1: unknown column 'Telefon'" in err and "without --strict" in err
    assert "0 created" in out
    assert await cli("--config", config, "contacts", "import", str(source)) == 0
    out, err = capsys.readouterr()
    assert err.count("ignored:") == 1
    assert (f"{source}: ignored: Kontakt-ID, Typ, Anrede, Telefon, Mobil, Kundenklasse "
            "(columns gatewayd does not use; --strict refuses them)") in err
    assert "1 created, 0 updated, 0 unchanged, 0 bad row(s)" in out
    async with open_database(db_url):
        erika = await Contact.get(email_private="erika@example.de")
        assert erika.email_paypal == "erika.paypal@example.de" and erika.language == "de"


def test_a_date_out_of_range_in_utc_is_its_rows_error() -> None:
    text = ("number,registered\n1,0001-01-01T00:00:00+01:00\n2,9999-12-31T23:59:59-01:00\n"
            "3,2024-02-01T10:00:00+01:00\n")
    rows, errors, _ignored = parse_csv(text)
    assert [r.values["number"] for r in rows] == ["3"]
    assert rows[0].values["registered_at"] == dt.datetime(2024, 2, 1, 9, tzinfo=dt.UTC)
    assert [e.line for e in errors] == [2, 3] and all("out of range" in e.message for e in errors)


async def test_cli_import_names_the_line_that_is_not_utf8(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path / "site", db_url))
    source = tmp_path / "latin1.csv"
    source.write_bytes("number,first_name\n1,Anna\n2,Jörg\n".encode("latin-1"))
    assert await cli("--config", config, "contacts", "import", str(source)) == 1
    _out, err = capsys.readouterr()
    assert f"{source}:3: not UTF-8" in err and "save the file as UTF-8" in err
