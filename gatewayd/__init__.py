"""gatewayd: a mail gateway daemon between support mailboxes, shop forms and a ticket store."""

__version__ = "0.1.0"
