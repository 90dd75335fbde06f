"""How long a ``curate`` command takes to start, against ``sqlite-utils --version`` on the same machine.

    .venv/bin/python bench/bench_startup.py [--rounds 20] [--rows 20]

Each command is a fresh process, timed from before ``subprocess.run`` until it has exited (so the
interpreter's start, every import, typer building the command line, the work and the exit), with
its output captured. The commands:

- ``sqlite-utils --version``: the floor, a small click CLI (the ``bench`` extra installs it).
  Where pandas is installed (the ``dev`` extra brings it), sqlite-utils imports pandas and numpy as
  it starts, so the same run also times it with both made unimportable (``sys.modules[...] =
  None``), as a bare ``pip install sqlite-utils`` would run: the lean floor.
- ``curate --help``, ``curate version``, and ``curate sql`` of a GROUP BY on a small store
  (``--rows`` generations from ``curate.synthetic``, imported with ``curate import`` once, before
  the rounds).

The machine's speed drifts from one minute to the next, so the commands run in rounds: each
round runs every command once, in the opposite order to the round before, and each command's
time is also divided by the floor's time in the same round. The ratios reported are the medians
of those per-round ratios. One untimed run of each command comes first (bytecode, page cache).

Then, once per curate command, ``python -X importtime`` says where its imports went.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curate.synthetic import generation_record

BIN = Path(sys.executable).parent
FLOOR = "sqlite-utils --version"
LEAN_FLOOR = "sqlite-utils --version, no pandas/numpy"
LEAN_SQLITE_UTILS = (
    "import sys; sys.modules['pandas'] = sys.modules['numpy'] = None; "
    "from sqlite_utils.cli import cli; sys.argv[0] = 'sqlite-utils'; sys.exit(cli())"
)
QUERY = "select model, count(*) as generations from generations group by model order by model"
# What -X importtime reports for each curate command: cumulative microseconds of these modules.
MODULES = ("curate.cli", "typer", "rich.console", "typer._adapters", "pydantic", "duckdb", "pyarrow", "numpy",
           "curate.store", "curate.config", "curate.lake.reader", "httpx")


def commands(db: Path) -> dict[str, list[str]]:
    floor = BIN / "sqlite-utils"
    if not floor.exists():
        raise SystemExit(f"{floor}: not installed; pip install -e '.[bench]' (make bench does)")
    curate = str(BIN / "curate")
    return {
        FLOOR: [str(floor), "--version"],
        LEAN_FLOOR: [sys.executable, "-c", LEAN_SQLITE_UTILS, "--version"],
        "curate --help": [curate, "--help"],
        "curate version": [curate, "version"],
        "curate sql (small store)": [curate, "sql", "--db", str(db), QUERY],
    }


def environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CURATE_DB", "CURATE_LAKE", "CURATE_QUERIES"):
        env.pop(name, None)
    env["COLUMNS"] = "100"  # one width for rich's tables, whatever runs this
    return env


def run(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, env=env, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return seconds


def importtimes(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    """Cumulative import microseconds of MODULES in one run of a curate command (0: not imported)."""
    # The console script is a Python file: run it under -X importtime.
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, check=True)
    found: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in MODULES and name not in found and cumulative.strip().isdigit():
            found[name] = int(cumulative)
    return {name: found.get(name, 0) for name in MODULES}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20, help="generations in the small store")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    env = environment()
    with tempfile.TemporaryDirectory(prefix="curate-startup-") as tmp:
        jsonl, db = Path(tmp) / "generations.jsonl", Path(tmp) / "small.duckdb"
        jsonl.write_text("".join(json.dumps(generation_record(seed)) + "\n" for seed in range(args.rows)))
        subprocess.run([str(BIN / "curate"), "import", str(jsonl), "--db", str(db), "--json"], check=True,
                       capture_output=True, env=env)
        argvs = commands(db)
        names = list(argvs)
        for name in names:  # untimed: bytecode written, files in the page cache
            run(argvs[name], env)

        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                seconds[name].append(run(argvs[name], env))
        imports = {name: importtimes(argv, env) for name, argv in argvs.items() if name.startswith("curate")}

    ratios = {
        floor: {name: statistics.median(t / f for t, f in zip(seconds[name], seconds[floor], strict=True))
                for name in names}
        for floor in (FLOOR, LEAN_FLOOR)
    }
    print(f"{args.rounds} rounds; {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    print()
    print(f"| command | median s | min s | max s | × `{FLOOR}` | × lean floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        times = seconds[name]
        print(f"| `{name}` | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} | "
              f"{ratios[FLOOR][name]:.2f} | {ratios[LEAN_FLOOR][name]:.2f} |")
    print()
    print("-X importtime, cumulative ms (one run each; 0: not imported):")
    print()
    print("| command | " + " | ".join(MODULES) + " |")
    print("|---|" + "---:|" * len(MODULES))
    for name, found in imports.items():
        print(f"| `{name}` | " + " | ".join(f"{found[m] / 1000:.0f}" for m in MODULES) + " |")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "ratios": ratios, "imports": imports}, indent=1))


if __name__ == "__main__":
    main()
