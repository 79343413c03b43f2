"""outbound/: event actions, recipients, templates, the test/live guard and the SMTP sender."""
