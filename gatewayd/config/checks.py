"""The semantic checks of a configuration: cross-references and rules that pydantic cannot see
on one field. Pure: no file access."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from gatewayd.config.base import is_loopback
from gatewayd.config.lmtp import address_problems, lmtp_problems
from gatewayd.config.schema import (
    MAX_ACCOUNTS,
    MAX_CONNECTIONS_PER_ACCOUNT,
    NAMED_RECIPIENTS,
    Account,
    Config,
    EventFilter,
    Form,
    Problem,
    ScheduledFilter,
    TicketRef,
    is_address,
)


def check_semantics(config: Config) -> list[Problem]:
    """Cross-references and rules pydantic cannot see on one field. Pure: no file access."""
    problems: list[Problem] = []
    add = problems.append
    groups = {g.name for g in config.status_groups}
    type_names = [t.name for t in config.ticket_types]

    if config.mode == "test" and not config.test_recipient:
        add(Problem("test_recipient", 'mode = "test" needs a test address',
                    'set test_recipient = "qa@your-shop.example" (or mode = "live")'))
    for key in ("test_recipient", "merchant_address"):
        value = getattr(config, key)
        if value and not is_address(value):
            add(Problem(key, f"{value!r} is not an e-mail address", "use name@domain.example"))
    if not config.ticket_types:
        add(Problem("ticket_types", "no ticket type is configured",
                    "add at least one [[ticket_types]] with its statuses"))
    if not config.backend_ticket_url:
        add(Problem("backend_ticket_url", "not set, so owner notices and the merchant's info "
                    "mails carry no link to the ticket",
                    'set it to your backend\'s ticket page, e.g. '
                    '"https://backend.shop.example/tickets/{id}"', "warning"))
    elif "{id}" not in config.backend_ticket_url:
        add(Problem("backend_ticket_url", "the URL has no {id} placeholder",
                    'use e.g. "https://backend.shop.example/tickets/{id}"'))
    if config.customer_ticket_url and "{id}" not in config.customer_ticket_url:
        add(Problem("customer_ticket_url", "the URL has no {id} placeholder",
                    'use e.g. "https://shop.example/my-account/tickets/{id}"'))
    if not re.match(r"^[A-Za-z0-9.-]+$", config.message_id_domain):
        add(Problem("message_id_domain", "not a domain name", 'use e.g. "tickets.shop.example"'))
    if not config.database_url.startswith(
        ("sqlite://", "postgres://", "postgresql://", "asyncpg://")
    ):
        scheme = config.database_url.split(":")[0]
        add(Problem("database_url", f"unsupported database URL scheme {scheme!r}",
                    'use "sqlite://PATH" or "postgres://user@host:5432/db"'))

    connections = config.outbound.connections_per_account
    if not 1 <= connections <= MAX_CONNECTIONS_PER_ACCOUNT:
        add(Problem("outbound.connections_per_account",
                    f"{connections} SMTP connections per account",
                    f"use 1 to {MAX_CONNECTIONS_PER_ACCOUNT} (2 suits most providers; many "
                    "refuse more than a few connections from one client)"))

    for key, names in (("status_groups", [g.name for g in config.status_groups]),
                       ("ticket_types", type_names),
                       ("roles", [r.name for r in config.roles]),
                       ("owners", [o.name for o in config.owners]),
                       ("accounts", [a.name for a in config.accounts]),
                       ("events", [e.name for e in config.events]),
                       ("forms", [f.name for f in config.forms]),
                       ("scheduled", [s.name for s in config.scheduled])):
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                add(Problem(f"{key}[{index}]({name}).name", f"duplicate name {name!r}",
                            "give every entry a unique name"))
            seen.add(name)

    for ti, ticket_type in enumerate(config.ticket_types):
        seen_status: set[str] = set()
        for si, status in enumerate(ticket_type.statuses):
            key = f"ticket_types[{ti}]({ticket_type.name}).statuses[{si}]"
            if status.group not in groups:
                add(Problem(f"{key}.group", f"unknown status group {status.group!r}",
                            f"use one of {sorted(groups)} or add it under [[status_groups]]"))
            if status.name in seen_status:
                add(Problem(f"{key}.name", f"duplicate status {status.name!r}",
                            "give every status of a type a unique name"))
            seen_status.add(status.name)

    def check_ref(key: str, ref: TicketRef) -> None:
        ticket_type = config.ticket_type(ref.type)
        if ticket_type is None:
            add(Problem(f"{key}.type", f"unknown ticket type {ref.type!r}",
                        f"use one of {type_names}"))
        elif ticket_type.status(ref.status) is None:
            add(Problem(f"{key}.status", f"type {ref.type!r} has no status {ref.status!r}",
                        f"use one of {[s.name for s in ticket_type.statuses]}"))

    role_names = {r.name for r in config.roles}
    for oi, owner in enumerate(config.owners):
        if owner.role and owner.role not in role_names:
            add(Problem(f"owners[{oi}]({owner.name}).role", f"unknown role {owner.role!r}",
                        f"use one of {sorted(role_names)} or add it under [[roles]]"))
        if owner.email and not is_address(owner.email):
            add(Problem(f"owners[{oi}]({owner.name}).email", f"{owner.email!r} is not an address",
                        "use name@domain.example"))

    if len(config.accounts) > MAX_ACCOUNTS:
        add(Problem("accounts", f"{len(config.accounts)} accounts configured, at most "
                    f"{MAX_ACCOUNTS} are supported", "remove or merge accounts"))
    for ai, account in enumerate(config.accounts):
        key = f"accounts[{ai}]({account.name})"
        check_ref(f"{key}.new_ticket", account.new_ticket)
        if not is_address(account.address):
            add(Problem(f"{key}.address", f"{account.address!r} is not an e-mail address",
                        "use the mailbox's address, e.g. support@shop.example"))
        for proto in ("imap", "smtp"):
            settings = getattr(account, proto)
            if settings is not None and settings.security == "none" and not is_loopback(
                settings.host
            ):
                add(Problem(f"{key}.{proto}.security",
                            f'security = "none" on the non-loopback host {settings.host!r} '
                            "would send the password in plain text",
                            'use "tls" or "starttls" (plain text is for 127.0.0.1 only)'))
        problems += oauth2_problems(key, account)
        if account.imap and account.imap.after_import == "move" and not account.imap.move_to:
            add(Problem(f"{key}.imap.move_to", 'after_import = "move" needs a folder',
                        'set move_to = "Imported" or use after_import = "delete"'))
        imap = account.imap
        floor = max(imap.timeout_seconds, imap.parse_timeout_seconds) if imap else 0.0
        if imap and imap.stall_seconds is not None and imap.stall_seconds <= floor:
            add(Problem(f"{key}.imap.stall_seconds",
                        f"{imap.stall_seconds:g} s is not longer than timeout_seconds "
                        f"({imap.timeout_seconds:g}) and parse_timeout_seconds "
                        f"({imap.parse_timeout_seconds:g}): a slow but working command or "
                        "parse would count as a stall",
                        f"set it above both, e.g. {2 * floor:g}, or leave it unset"))
        if account.smtp and account.smtp.reply_to and not is_address(account.smtp.reply_to):
            add(Problem(f"{key}.smtp.reply_to", f"{account.smtp.reply_to!r} is not an address",
                        "use name@domain.example"))

    problems += address_problems(config)
    problems += lmtp_problems(config)

    all_statuses = {s.name for t in config.ticket_types for s in t.statuses}
    owner_names = {o.name for o in config.owners}
    account_names = {a.name for a in config.accounts}
    for ei, event in enumerate(config.events):
        key = f"events[{ei}]({event.name})"
        flt = event.filter
        problems += _ticket_filter_problems(config, f"{key}.filter", flt)
        for ni, name in enumerate(flt.accounts):
            if name not in account_names:
                add(Problem(f"{key}.filter.accounts[{ni}]", f"unknown account {name!r}",
                            f"use one of {sorted(account_names)}"))
        for ni, name in enumerate(flt.owners):
            if name not in owner_names:
                add(Problem(f"{key}.filter.owners[{ni}]", f"unknown owner {name!r}",
                            f"use one of {sorted(owner_names)}"))
        for ai, action in enumerate(event.actions):
            akey = f"{key}.actions[{ai}]"
            chosen = [k for k in ("send_template", "set_status", "set_owner")
                      if getattr(action, k) is not None]
            if len(chosen) != 1:
                add(Problem(akey, "an action needs exactly one of send_template, set_status, "
                            "set_owner", 'e.g. { send_template = "staff_reply", to = "customer" }'))
                continue
            if action.send_template is not None:
                if not action.to:
                    add(Problem(f"{akey}.to", "send_template needs a recipient",
                                f"set to = one of {list(NAMED_RECIPIENTS)} or an address"))
                elif action.to not in NAMED_RECIPIENTS and not is_address(action.to):
                    add(Problem(f"{akey}.to", f"unknown recipient {action.to!r}",
                                f"use one of {list(NAMED_RECIPIENTS)} or an e-mail address"))
            elif action.to is not None:
                add(Problem(f"{akey}.to", "'to' belongs only to send_template actions",
                            "remove it"))
            if action.set_status is not None and action.set_status not in all_statuses:
                add(Problem(f"{akey}.set_status", f"unknown status {action.set_status!r}",
                            f"use one of {sorted(all_statuses)}"))
            if action.set_owner is not None and action.set_owner not in owner_names:
                add(Problem(f"{akey}.set_owner", f"unknown owner {action.set_owner!r}",
                            f"use one of {sorted(owner_names)} or add it under [[owners]]"))

    for fi, form in enumerate(config.forms):
        key = f"forms[{fi}]({form.name})"
        check_ref(f"{key}.ticket", form.ticket)
        emails = [f for f in form.fields if f.type == "email"]
        if len(emails) != 1:
            add(Problem(f"{key}.fields", f"a form needs exactly one field of type 'email' "
                        f"(found {len(emails)})", "the email field identifies the customer"))
        seen_fields: set[str] = set()
        for fi, form_field in enumerate(form.fields):
            if form_field.name in seen_fields:
                add(Problem(f"{key}.fields[{fi}]({form_field.name}).name",
                            f"duplicate field name {form_field.name!r}",
                            "give every field a unique name"))
            seen_fields.add(form_field.name)
        problems += form_protection_problems(config, key, form)

    for kind in ("ticket", "customer", "order", "invoice"):
        for ai, alias in enumerate(getattr(config.routing, f"{kind}_aliases")):
            key = f"routing.{kind}_aliases[{ai}]"
            letters = sum(ch.isalpha() for ch in alias)
            if letters == 0 or any(ch.isdigit() for ch in alias):
                add(Problem(key, f"{alias!r} is not a word", "write the word customers put "
                            'before the number, without the number, e.g. "Vorgangsnummer"'))
            elif letters < 3:
                add(Problem(key, f"{alias!r} is very short and will match ordinary text",
                            'use the whole word, e.g. "Vorgangsnummer"', "warning"))

    problems += _loopback_problems(config)

    for si, job in enumerate(config.scheduled):
        key = f"scheduled[{si}]({job.name})"
        problems += _ticket_filter_problems(config, f"{key}.filter", job.filter)
        if job.action == "set_status" and (job.status is None or job.status not in all_statuses):
            add(Problem(f"{key}.status", "set_status needs a known status",
                        f"set status = one of {sorted(all_statuses)}"))
        if job.action == "move_to_folder" and not job.folder:
            add(Problem(f"{key}.folder", "move_to_folder needs a folder", 'set folder = "Archiv"'))
    return problems


def _ticket_filter_problems(config: Config, key: str,
                            flt: EventFilter | ScheduledFilter) -> list[Problem]:
    """The ticket types, statuses and status groups an event or scheduled filter names. Pure."""
    type_names = [t.name for t in config.ticket_types]
    all_statuses = sorted({s.name for t in config.ticket_types for s in t.statuses})
    groups = sorted({g.name for g in config.status_groups})
    problems: list[Problem] = []
    for ti, type_name in enumerate(flt.types):
        if type_name not in type_names:
            problems.append(Problem(f"{key}.types[{ti}]", f"unknown ticket type {type_name!r}",
                                    f"use one of {type_names}"))
    for si, status_name in enumerate(flt.statuses):
        if status_name not in all_statuses:
            problems.append(Problem(f"{key}.statuses[{si}]", f"unknown status {status_name!r}",
                                    f"use one of {all_statuses}"))
    for gi, group in enumerate(flt.status_groups):
        if group not in groups:
            problems.append(Problem(f"{key}.status_groups[{gi}]",
                                    f"unknown status group {group!r}", f"use one of {groups}"))
    return problems


def form_protection_problems(config: Config, key: str, form: Form) -> list[Problem]:
    """A form's abuse-protection keys: proxies, origins, honeypot, signature, success URL. Pure."""
    problems: list[Problem] = []
    add = problems.append
    for pi, proxy in enumerate(form.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            add(Problem(f"{key}.trusted_proxies[{pi}]",
                        f"{proxy!r} is not an IP address or network",
                        'use e.g. "127.0.0.1" or "10.0.0.0/8"'))
    for oi, origin in enumerate(form.allowed_origins):
        if not re.match(r"^https?://[A-Za-z0-9.\[\]:-]+$", origin):
            add(Problem(f"{key}.allowed_origins[{oi}]", f"{origin!r} is not an origin",
                        'use scheme://host[:port] without path, e.g. "https://shop.example"'))
    if form.honeypot and form.honeypot in {f.name for f in form.fields}:
        add(Problem(f"{key}.honeypot", f"the honeypot {form.honeypot!r} is also a field name",
                    "give the honeypot a name no real field uses, or set honeypot = \"\" to "
                    "switch it off"))
    if form.require_signature and form.hmac_secret is None and form.hmac_secret_file is None:
        add(Problem(f"{key}.require_signature", "signatures are required but no secret is set",
                    "set hmac_secret_file (or hmac_secret), or require_signature = false"))
    if form.success_url and not re.match(r"^(https?://|/)", form.success_url):
        add(Problem(f"{key}.success_url", f"{form.success_url!r} is not an http(s) URL or path",
                    'use e.g. "https://shop.example/kontakt/danke"'))
    if form.max_attachment_bytes > form.max_body_bytes:
        add(Problem(f"{key}.max_attachment_bytes", "larger than max_body_bytes, so never reached",
                    "raise max_body_bytes or lower max_attachment_bytes", "warning"))
    if not config.merchant_address:
        add(Problem("merchant_address", f"form {form.name!r} has no one to send its info mail to",
                    'set merchant_address = "owner@shop.example"', "warning"))
    return problems


def _plain_url_problem(key: str, url: str | None) -> Problem | None:
    """A token endpoint gets the client secret and hands out tokens: https only, except on
    loopback (tests, a local identity provider)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return None
    return Problem(key, f"{url!r} is not an https:// URL",
                   "use the provider's https:// endpoint (plain http only on 127.0.0.1)")


def oauth2_problems(key: str, account: Account) -> list[Problem]:
    """`auth = "oauth2"` and `[accounts.oauth2]` of one account. Pure."""
    problems: list[Problem] = []
    add = problems.append
    oauth = account.oauth2
    used = False
    for proto in ("imap", "smtp"):
        settings = getattr(account, proto)
        if settings is None or settings.auth != "oauth2":
            continue
        used = True
        if oauth is None:
            add(Problem(f"{key}.{proto}.auth", 'auth = "oauth2" but the account has no '
                        "[accounts.oauth2]", "add [accounts.oauth2] with provider and client_id "
                        '(docs/providers.md), or set auth = "password"'))
        if settings.password is not None or settings.password_file is not None:
            which = "password" if settings.password is not None else "password_file"
            add(Problem(f"{key}.{proto}.{which}", 'both a password and auth = "oauth2" are set',
                        f'remove {which} (OAuth2 logs in with a token), or set auth = "password"'))
    if oauth is None:
        return problems
    okey = f"{key}.oauth2"
    flow = oauth.effective_flow
    if not used:
        add(Problem(f"{okey}", "[accounts.oauth2] is set but no login uses it",
                    'set auth = "oauth2" in [accounts.imap] and/or [accounts.smtp]', "warning"))
    if not oauth.client_id:
        add(Problem(f"{okey}.client_id", "no client id",
                    "register the app at the provider and set client_id to its application "
                    "(client) ID (docs/providers.md)"))
    if oauth.provider == "microsoft" and not oauth.tenant:
        add(Problem(f"{okey}.tenant", "Microsoft needs the tenant",
                    'set tenant = "contoso.onmicrosoft.com" (or the directory ID) from Entra ID'))
    if oauth.provider != "microsoft" and oauth.tenant:
        add(Problem(f"{okey}.tenant", f"tenant is used by provider microsoft only, not by "
                    f"{oauth.provider}", "remove it", "warning"))
    if oauth.provider == "google" and flow == "client_credentials":
        add(Problem(f"{okey}.flow", "Google has no client-credentials grant for mail",
                    'use flow = "refresh_token" and `gatewayd oauth login`'))
    if oauth.provider == "custom" and not oauth.token_url:
        add(Problem(f"{okey}.token_url", 'provider = "custom" needs a token URL',
                    'set token_url = "https://login.example/oauth2/token"'))
    if oauth.client_secret is not None and oauth.client_secret_file is not None:
        add(Problem(f"{okey}.client_secret", "both client_secret and client_secret_file are set",
                    "keep one (the file, or a systemd credential, keeps it out of the config)"))
    if (flow == "refresh_token" and oauth.provider == "custom"
            and not oauth.device_authorization_url and not oauth.authorization_url):
        add(Problem(f"{okey}.device_authorization_url", "`gatewayd oauth login` has no way to "
                    "get a refresh token", "set device_authorization_url (or authorization_url)",
                    "warning"))
    for url_key in ("token_url", "device_authorization_url", "authorization_url"):
        problem = _plain_url_problem(f"{okey}.{url_key}", getattr(oauth, url_key))
        if problem:
            add(problem)
    return problems


def _loopback_problems(config: Config) -> list[Problem]:
    """`[loopback]`: its servers take plain-text logins, so they stay on loopback."""
    loopback = config.loopback
    if loopback is None:
        return []
    problems = []
    for key, host in (("imap_listen", loopback.imap_host), ("smtp_listen", loopback.smtp_host)):
        if not is_loopback(host):
            problems.append(Problem(f"loopback.{key}", f"{host!r} is not a loopback address",
                                    'use "127.0.0.1:PORT" (the embedded servers are for '
                                    "trying gatewayd out on this machine)"))
    if config.mode == "live":
        problems.append(Problem("loopback", 'the embedded IMAP server and SMTP sink run in '
                                'mode = "live"', "remove [loopback] once real mailboxes are "
                                "configured", "warning"))
    return problems
