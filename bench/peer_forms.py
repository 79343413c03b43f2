"""django-helpdesk's public ticket form beside gatewayd's form, same load, same two mails.

    python -m bench.peer_forms --helpdesk-python /path/to/venv/bin/python [--seconds 8]

django-helpdesk is not a dependency of gatewayd and none of its code is in this repository:
install it into a separate virtual environment outside the repository first,

    python3 -m venv /tmp/helpdesk && /tmp/helpdesk/bin/pip install django-helpdesk gunicorn

This writes a minimal Django project into a temporary folder (SQLite in WAL mode with
synchronous=FULL, like gatewayd's; Django's SMTP e-mail backend to the same SMTP sink), creates
one queue that takes public submissions and copies each new ticket to the merchant
(`new_ticket_cc`, the merchant's info mail; the submitter gets django-helpdesk's own
confirmation), and serves it with gunicorn (sync workers, 2 x cores + 1 as gunicorn's docs
advise). The load generator posts `/tickets/submit/` (answer 302) at the same concurrency as
gatewayd's `/forms/contact` (answer 201), taking turns. Django's CSRF middleware is left out:
the load generator does not fetch a token first (a browser would, with one more request).
Printed: submissions per second, p50/p99, CPU ms per submission of all server processes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench import forms
from bench.httpload import Figures, cpu_seconds, load, machine, merge, post
from bench.httpload import server as start_server
from bench.smtpsink import serve_sink

_SETTINGS = """
SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "site_urls"
SITE_ID = 1
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "django.contrib.sites", "django.contrib.humanize", "rest_framework", "helpdesk",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages"]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3", "NAME": __DB__,
    "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"},
}}
STATIC_URL = "/static/"
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = __SMTP_PORT__
DEFAULT_FROM_EMAIL = "support@shop.example"
HELPDESK_TEAMS_MODE_ENABLED = False  # teams need pinax-teams, not installed here
LOGGING = {"version": 1, "disable_existing_loggers": True}
"""

_URLS = """
from django.urls import include, path
urlpatterns = [path("", include("helpdesk.urls", namespace="helpdesk"))]
"""

_SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from helpdesk.models import Queue
queue = Queue.objects.create(title="Support", slug="support", allow_public_submission=True,
                             email_address="support@shop.example",
                             new_ticket_cc="owner@shop.example")
print(queue.id)
"""

_CUSTOMERS = itertools.count(1)


def helpdesk_submission(queue_id: int) -> Any:
    def make(port: int) -> bytes:
        body = urllib.parse.urlencode({
            "queue": queue_id, "title": forms.PAYLOAD["subject"], "body": forms.PAYLOAD["message"],
            "submitter_email": f"kunde{next(_CUSTOMERS)}@example.org", "priority": 3,
            "due_date": ""}).encode()
        return post("/tickets/submit/", port, body)
    return make


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (gunicorn's master and workers)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu(int(child)) for child in children)
    return total


def start_helpdesk(python: str, work: Path, smtp_port: int, workers: int,
                   port: int) -> tuple[subprocess.Popen[bytes], int]:
    (work / "site_settings.py").write_text(
        _SETTINGS.replace("__DB__", repr(str(work / "helpdesk.sqlite3")))
        .replace("__SMTP_PORT__", str(smtp_port)))
    (work / "site_urls.py").write_text(_URLS)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "site_settings", "PYTHONPATH": str(work)}
    queue_id = int(subprocess.run([python, "-c", textwrap.dedent(_SETUP)], env=env, cwd=work,
                                  check=True, capture_output=True, text=True).stdout.split()[-1])
    gunicorn = str(Path(python).with_name("gunicorn"))
    process = subprocess.Popen([gunicorn, "-w", str(workers), "-b", f"127.0.0.1:{port}",
                                "--log-level", "warning",
                                "django.core.wsgi:get_wsgi_application()"], env=env, cwd=work)
    return process, queue_id


async def _wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--helpdesk-python", required=True,
                        help="python of a virtual environment with django-helpdesk and gunicorn")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    args = parser.parse_args(argv)
    runs: dict[str, list[Figures]] = {"helpdesk": [], "gatewayd": []}
    with tempfile.TemporaryDirectory(prefix="gatewayd-peer-") as tmp, \
            start_server(serve_sink) as sink, \
            start_server(forms._serve_gatewayd, tmp, None, sink.port, True) as gw:
        work = Path(tmp) / "helpdesk"
        work.mkdir()
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        helpdesk, queue_id = start_helpdesk(args.helpdesk_python, work, sink.port,
                                            args.workers, port)
        try:
            asyncio.run(_wait_port(port))
            make = helpdesk_submission(queue_id)
            helpdesk_mails = 0
            for number in range(1, args.rounds + 1):
                mails_before = sink.ask("received")
                before = tree_cpu(helpdesk.pid)
                figures = asyncio.run(load("helpdesk", (port, helpdesk.pid), args.seconds,
                                           args.concurrency, make, ok=(302,)))
                # `load` measured the master only: count the workers too.
                figures.cpu_seconds = tree_cpu(helpdesk.pid) - before
                helpdesk_mails += sink.ask("received") - mails_before  # sent in the request
                runs["helpdesk"].append(figures)
                ours = asyncio.run(load("gatewayd", gw.address, args.seconds, args.concurrency,
                                        forms.submission))
                gw.ask("confirmations", *ours.extra["window"])  # waits until all are sent
                runs["gatewayd"].append(ours)
                print(f"round {number}: django-helpdesk {figures.rate:.1f}/s, gatewayd "
                      f"{ours.rate:.1f}/s", file=sys.stderr)
        finally:
            helpdesk.terminate()
            helpdesk.wait(timeout=30)
        mails = sink.ask("received")
    print(f"public form submissions, live with the submitter's confirmation and the merchant's "
          f"copy, concurrency {args.concurrency}, SQLite, {args.rounds} rounds of "
          f"{args.seconds:.0f} s; {time.strftime('%Y-%m-%d %H:%M')}, {machine()}; "
          f"{mails} mails reached the sink, {helpdesk_mails} of them from django-helpdesk for "
          f"{sum(f.requests for f in runs['helpdesk'])} measured submissions (and the warm-up)")
    print(f"{'':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>11}")
    merged = {"helpdesk": merge(f"django-helpdesk (gunicorn -w {args.workers})",
                                runs["helpdesk"]),
              "gatewayd": merge("gatewayd POST /forms", runs["gatewayd"])}
    for figures in merged.values():
        print(f"{figures.name:34} {figures.rate:8.1f} {figures.percentile(50):8.1f} "
              f"{figures.percentile(99):8.1f} {figures.errors:7d} {figures.cpu_ms:11.2f}")
    ratio = merged["gatewayd"].rate / merged["helpdesk"].rate if merged["helpdesk"].rate else 0
    print(f"gatewayd: {ratio:.1f}x django-helpdesk's rate (target >= 8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
