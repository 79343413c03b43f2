"""routing/: pure decisions about where a mail belongs and what it names."""
