"""The checks LMTP needs: accounts' addresses and aliases lead to one account each, and the
listener stays on loopback unless allowed. Pure: no file access."""

from __future__ import annotations

from gatewayd.config.base import Problem, is_address, is_loopback
from gatewayd.config.schema import Config


def address_problems(config: Config) -> list[Problem]:
    """Accounts' `aliases`: real addresses, and no address leading to two accounts (LMTP must
    know which account a recipient belongs to). The main address's form is checked in
    `checks`. Two accounts may share a main address without [lmtp] (two folders of one
    mailbox, say)."""
    problems: list[Problem] = []
    claimed: dict[str, str] = {}  # lower-cased address → account
    for account in config.accounts:
        claimed.setdefault(account.address.lower(), account.name)
    for ai, account in enumerate(config.accounts):
        key = f"accounts[{ai}]({account.name})"
        if config.lmtp is not None and claimed.get(account.address.lower()) != account.name:
            problems.append(Problem(
                f"{key}.address", f"{account.address!r} is also the address of account "
                f"{claimed[account.address.lower()]!r}",
                "over LMTP an address leads to one account only: give each account its own"))
        for li, alias in enumerate(account.aliases):
            lower = alias.lower()
            if not is_address(alias):
                problems.append(Problem(f"{key}.aliases[{li}]", f"{alias!r} is not an e-mail "
                                        "address", "use name@domain.example"))
            elif lower in claimed:
                owner = claimed[lower]
                problems.append(Problem(
                    f"{key}.aliases[{li}]",
                    f"{alias!r} is already an address of "
                    + ("this account" if owner == account.name else f"account {owner!r}"),
                    "an address can lead to one account only: remove it here or there"))
            else:
                claimed[lower] = account.name
    return problems


def lmtp_problems(config: Config) -> list[Problem]:
    """`[lmtp]`: no listener reachable from other machines unless allowed. Pure."""
    lmtp = config.lmtp
    if lmtp is None:
        return []
    problems: list[Problem] = []
    if lmtp.unix_path is None and not lmtp.allow_remote and not is_loopback(lmtp.host):
        problems.append(Problem(
            "lmtp.listen", f"{lmtp.listen!r} is not a loopback address: anyone who reaches it "
            "could hand mail to gatewayd", 'listen on "127.0.0.1:2424" or '
            '"unix:/run/gatewayd/lmtp.sock", or set allow_remote = true (and firewall the port '
            "to your MTA)"))
    if not any(a.active for a in config.accounts):
        problems.append(Problem("lmtp", "no active account, so every recipient is refused",
                                "add an [[accounts]] entry (its address receives over LMTP)",
                                "warning"))
    return problems
