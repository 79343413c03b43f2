"""Operations: systemd lifecycle, reload, instances, scheduled actions, contacts and GDPR."""
