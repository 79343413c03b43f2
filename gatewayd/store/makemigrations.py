"""Developer tool: write a migration for model changes.

Run `python -m gatewayd.store.makemigrations [NAME]` after changing `store/models.py`.
"""

from __future__ import annotations

import asyncio
import sys

from tortoise.cli.cli import CLIContext, makemigrations

from gatewayd.store.db import tortoise_config

# The autodetector compares the models with the migration files, not with a database.
DEV_CONFIG = tortoise_config("sqlite://:memory:")


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else None
    ctx = CLIContext(config="gatewayd.store.makemigrations.DEV_CONFIG", config_file=None)
    asyncio.run(makemigrations(ctx, (), False, name))


if __name__ == "__main__":
    main()
