"""ingest/: fetching mail from IMAP accounts and parsing it into InboundMail values."""
