"""The house's imports: the command line starts without the heavy libraries its other commands use."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("huggingface_hub", "datasets", "pyiceberg", "rensa", "starlette")


def test_importing_the_command_line_loads_none_of_the_heavy_libraries() -> None:
    # A fresh interpreter: this test process has long imported them all.
    done = subprocess.run(
        [sys.executable, "-c",
         f"import sys, json, curate.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(done.stdout) == []
