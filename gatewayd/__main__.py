"""`python -m gatewayd` runs the command line."""

import sys

from gatewayd.cli import main

sys.exit(main())
