"""Why outbound mail cannot go out now: the account it goes through is inactive, has no SMTP,
or there is no account at all. Pure, read from the configuration in force, so `status`,
`GET /api/outbox` and the sender always give the current reason."""

from __future__ import annotations

from gatewayd.config import Account, Config, Problem


def sending_account(config: Config, account_name: str | None) -> Account | None:
    """The account a mail goes through: the one it names, else (forms, API tickets, an account
    since removed) the answering account, the first active one with SMTP."""
    if account_name:
        account = config.account(account_name)
        if account is not None:
            return account
    return config.answering_account


def waiting_reason(config: Config, account_name: str | None) -> str | None:
    """Why mail of this account cannot be sent, or None when it can."""
    account = sending_account(config, account_name)
    if account is None:
        return "no account is configured to send through"
    if not account.active:
        return f"account {account.name} is inactive"
    if account.smtp is None:
        return f"no SMTP configured for account {account.name}"
    return None


def waiting_fix(config: Config, account_name: str | None) -> str:
    """How to make such mail go out (for `check` and `status`)."""
    account = sending_account(config, account_name)
    if account is None:
        return "add an [[accounts]] entry with [accounts.smtp]"
    if not account.active:
        return (f"set active = true for account {account.name} once its hosts and passwords "
                f"are right (then `gatewayd test-send {account.name}` tries it)")
    return f"add [accounts.smtp] with host, port and security to account {account.name}"


def answering_note(config: Config) -> str | None:
    """One line for `check`: which account answers form and API tickets."""
    account = config.answering_account
    if account is None:
        return None
    reason = waiting_reason(config, None)
    how = (f"but it cannot send: {reason}" if reason
           else "the first active account with SMTP")
    return f"form and API tickets are answered through account {account.name} ({how})"


def waiting_problems(config: Config) -> list[Problem]:
    """Warnings for mail that would wait in the outbox with the configuration as it is."""
    problems: list[Problem] = []
    sends = any(a.send_template for e in config.events if e.active for a in e.actions)
    reason = waiting_reason(config, None)
    if reason and (config.forms or sends):
        answering = config.answering_account
        key = "accounts"
        if answering is not None:
            key = f"accounts[{config.accounts.index(answering)}]({answering.name})"
        what = ("form answers and the merchant's info mails" if config.forms
                else "mails of API tickets")
        problems.append(Problem(key, f"{what} wait in the outbox: {reason}",
                                waiting_fix(config, None), "warning"))
    if not sends:
        return problems
    for index, account in enumerate(config.accounts):
        if account.active and account.imap is not None and account.smtp is None:
            problems.append(Problem(
                f"accounts[{index}]({account.name}).smtp",
                "event actions answer its mail, but those answers wait in the outbox: "
                f"no SMTP configured for account {account.name}",
                waiting_fix(config, account.name), "warning"))
    return problems
