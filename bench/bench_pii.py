"""``pii.find()`` throughput: ordinary chat messages, the inputs that were quadratic, one 10 MB message.

    cd bench && ../.venv/bin/python bench_pii.py [--size 1] [--module PATH]

Ordinary text is ``curate.synthetic``'s requests and answers, one message per ``find()`` call as
``scan`` makes them, with one planted e-mail, phone number, card, IP address or key in every
tenth. Each worst input is ``--size`` MB of one pathological piece repeated, scanned as one
message; the 10 MB message is ordinary messages joined by newlines. MB are 10^6 bytes of UTF-8.

``--module`` times another ``pii.py`` (e.g. the one before issue 17:
``git show c30ee6c:curate/pii.py > /tmp/pii_before.py``), with a small ``--size``: that one was
quadratic.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

from curate import pii, synthetic

PLANTED = [
    "write to jane.doe@example.com",
    "call me on +44 20 7946 0958",
    "my card is 4111 1111 1111 1111",
    "the box is at 192.168.1.10",
    "key AKIA" + "IOSFODNN7EXAMPLE",
    "or (415) 555-2671 after six",
    "token=kJ8s9dPq2LmN3vB7xZ4wR6tY1uI0oPaSdFgHjKlQ",
]
WORST = {
    "BEGIN lines without END": "-----BEGIN PRIVATE KEY-----\n",
    "e-mail addresses": "a1@x.io ",
    "card numbers": "4111 1111 1111 1111, ",
    "IPv4 addresses": "10.0.0.1 ",
    "IPv6 addresses": "2001:db8::8a2e:370:7334 ",
    "AWS keys": "AKIA" + "IOSFODNN7EXAMPLE ",
    "high-entropy tokens": "kJ8s9dPq2LmN3vB7xZ4wR6tY1uI0oPaSdFgHjKlQ ",
    "one digit run": "1",
    "one token run": "aB3",
    "one run of dots": ".",
    "IP-like run (1.1.1...)": "1.",
    "digits and spaces": "1 ",
    "BEGIN with an endless label": "A ",
}


def ordinary_messages(n_bytes: int) -> list[str]:
    """Chat messages, requests and answers, until they hold ``n_bytes`` of UTF-8."""
    messages: list[str] = []
    total = 0
    seed = 0
    while total < n_bytes:
        request = synthetic.chat_request(seed)
        answer = synthetic.chat_response(seed, request, created=0)["choices"][0]["message"]["content"]
        for text in [m["content"] for m in request["messages"]] + ([answer] if answer else []):
            if len(messages) % 10 == 9:
                words = text.split(" ")
                words.insert(len(words) // 2, PLANTED[len(messages) // 10 % len(PLANTED)])
                text = " ".join(words)
            messages.append(text)
            total += len(text.encode())
        seed += 1
    return messages


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock and CPU seconds of ``fn()``, and what it returned."""
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - started, time.process_time() - cpu, out


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("pii_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pii_under_test"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=float, default=1.0, help="MB of each worst input")
    parser.add_argument("--big", type=float, default=10.0, help="MB of the one big message")
    parser.add_argument("--module", help="a pii.py to time instead of curate.pii")
    args = parser.parse_args()
    find = load(args.module).find if args.module else pii.find

    rows: list[tuple[str, float, int, float, float]] = []
    messages = ordinary_messages(2_000_000)
    seconds, cpu, found = timed(lambda: [f for m in messages for f in find(m)])
    rows.append((f"ordinary chat, {len(messages):,} messages", sum(len(m.encode()) for m in messages) / 1e6,
                 len(found), seconds, cpu))

    size = int(args.size * 1e6)
    for name, piece in WORST.items():
        text = piece * (size // len(piece))
        if name.startswith("BEGIN with"):
            text = "-----BEGIN " + text
        seconds, cpu, found = timed(partial(find, text))
        rows.append((name, len(text.encode()) / 1e6, len(found), seconds, cpu))

    big = "\n".join(ordinary_messages(int(args.big * 1e6)))
    seconds, cpu, found = timed(lambda: find(big))
    rows.append(("one ordinary message", len(big.encode()) / 1e6, len(found), seconds, cpu))

    print("| input | MB | findings | seconds | CPU seconds | MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mb, n, secs, cpu in rows:
        print(f"| {name} | {mb:.2f} | {n:,} | {secs:.2f} | {cpu:.2f} | {mb / secs:.2f} |")


if __name__ == "__main__":
    main()
