"""Embedded loopback servers (pymap IMAP, aiosmtpd SMTP sink) for `gatewayd demo` and tests."""
