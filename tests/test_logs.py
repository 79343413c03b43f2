"""JSON logs keep umlauts readable; a stdout that cannot encode them gets valid escapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = ("from gatewayd import logs; logs.configure('INFO', json=True); "
          "logs.get_logger('t').info('Grüße', customer='Müller')")


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_json_log_line_with_umlauts(encoding: str) -> None:
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    line = done.stdout.decode("utf-8").strip()
    assert json.loads(line)["customer"] == "Müller"
    if encoding == "utf-8":
        assert "Müller" in line  # readable, not \u00fc
    else:
        assert "M\\u00fcller" in line  # a stream that cannot take it gets valid JSON escapes
