"""The HTTP side: JSON API, health, and (later) forms and metrics."""
