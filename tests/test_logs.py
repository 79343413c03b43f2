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


def test_lines_below_the_level_are_dropped_and_the_rest_written() -> None:
    script = ("from gatewayd import logs; logs.configure('WARNING', json=True); "
              "log = logs.get_logger('t'); log.info('leise'); log.bind(x=1).debug('leiser'); "
              "log.warning('laut', n=2); import logging; logging.getLogger('lib').info('fremd')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
    assert [(e["event"], e["level"], e["n"]) for e in lines] == [("laut", "warning", 2)]
