"""Personal data and secrets in chat messages: find them, record where they are, redact them.

``find(text)`` returns the spans of one string that hold an email address, a phone number, a
credit card number, an IP address or a secret; ``scan(store)`` runs it over every message of the
``chat`` view and replaces the store's ``pii_findings`` with what it found (the stored bodies are
never modified); ``redact(text, findings)`` replaces each span by ``[EMAIL]``, ``[PHONE]``, ...

A scan does not sit on the store while Python looks for personal data: it copies the messages to
a temporary Parquet file under one read-only connection (``unload``), lets go, reads that file a
batch at a time, and writes its findings in one short transaction at the end.

The detectors, each named in a finding's ``detector``:

- ``email``: a regular expression (``local@domain.tld``).
- ``phone``: the ``phonenumbers`` library's ``PhoneNumberMatcher`` at leniency VALID, once with no
  region (numbers written internationally, ``+44 20 7946 0958``) and once with ``US`` as the
  default region (``(415) 555-2671``).
- ``credit_card``: runs of 13 to 19 digits, optionally split by single spaces or dashes, that
  pass the Luhn check (and are not one digit repeated).
- ``ip_address``: IPv4 and IPv6 candidates validated by the standard library's ``ipaddress``
  (``999.1.1.1`` is not an address; ``a::b``-like words are not counted).
- ``secret``: well-known token shapes (OpenAI ``sk-``, AWS ``AKIA``/``ASIA``, GitHub ``ghp_``
  and friends and ``github_pat_``, Slack ``xox[abpr]-``, Google ``AIza``, Stripe ``sk_live_``/
  ``rk_live_``, Hugging Face ``hf_``, JWTs, PEM private keys), then high-entropy strings: runs of
  32 to 256 base64/URL-safe characters holding an upper-case letter, a lower-case letter and a
  digit, whose Shannon entropy (bits per character, over the run's own characters) is above
  ``min(0.85 * log2(length), 4.6)``. That limit sits under the entropy nearly every random token
  of that length reaches and over that of camel-case identifiers and English. This is curate's
  own implementation: detect-secrets' high-entropy plugins need quoted strings and give back
  values, not spans, so they are not used.

When findings overlap, the longest span wins (at equal length, the more specific kind: secret,
credit card, email, IP address, phone), so the findings of one text never overlap.

A message's text is its ``content`` when that is a string, or its text parts (``{"type": "text",
"text": ...}``) joined by ``"\\n"`` when it is a list; spans are Python string offsets (code
points) into that text, and ``message_index`` is the message's position in ``chat.messages``
(the answer is the last). Tool-call arguments and other keys are not scanned.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from curate.store import Store

__all__ = ["KINDS", "PLACEHOLDERS", "Finding", "ScanResult", "find", "message_text", "redact", "scan"]

KINDS = ("email", "phone", "credit_card", "ip_address", "secret")
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}
# At equal length, the more specific kind wins an overlap.
_SPECIFICITY = {"secret": 5, "credit_card": 4, "email": 3, "ip_address": 2, "phone": 1}

BATCH_SIZE = 5000


@dataclass(frozen=True, order=True)
class Finding:
    """One span of ``text[start:end]`` holding a ``kind`` of personal data, found by ``detector``."""

    start: int
    end: int
    kind: str
    detector: str


@dataclass(frozen=True)
class ScanResult:
    """What one ``scan`` did: chat rows and messages read, findings per kind, and how long it took."""

    rows: int
    messages: int
    findings: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.findings.values())


# --- the detectors ---------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<!\d)(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
_SECRETS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?:[\s\S]*?-----END \1PRIVATE KEY-----)?")),
    ("jwt", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")),
    ("openai_key", re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}")),
    ("aws_access_key", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])")),
    ("github_token", re.compile(r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("slack_token", re.compile(r"(?<![\w-])xox[abpr]-[A-Za-z0-9-]{10,}")),
    ("google_api_key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")),
    ("stripe_key", re.compile(r"(?<![\w-])[sr]k_live_[0-9A-Za-z]{16,}")),
    ("huggingface_token", re.compile(r"(?<![\w-])hf_[A-Za-z0-9]{30,}")),
]
_TOKEN_CHARS = r"A-Za-z0-9+/_\-"
# "=" only as base64 padding at the end, so that "token=<value>" finds the value alone.
_HIGH_ENTROPY_CANDIDATE = re.compile(
    rf"(?<![{_TOKEN_CHARS}])[{_TOKEN_CHARS}]{{32,256}}={{0,2}}(?![{_TOKEN_CHARS}=])")
ENTROPY_FACTOR = 0.85
ENTROPY_CAP = 4.6


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``, over the characters it holds."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def entropy_limit(length: int) -> float:
    """The entropy a candidate of ``length`` characters must exceed to count as a secret."""
    return min(ENTROPY_FACTOR * math.log2(length), ENTROPY_CAP)


def is_high_entropy(token: str) -> bool:
    return (
        any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)
        and shannon_entropy(token) > entropy_limit(len(token))
    )


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding(m.start(), m.end(), "email", "regex")


def _phones(text: str) -> Iterator[Finding]:
    if sum(c.isdigit() for c in text) < 7:  # no phone number is shorter; spares the matcher
        return
    for region in (None, "US"):
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            yield Finding(match.start, match.end, "phone", "phonenumbers" if region is None else "phonenumbers:US")


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits):
            yield Finding(m.start(), m.end(), "credit_card", "luhn")


def _ips(text: str) -> Iterator[Finding]:
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Finding(m.start(), m.end(), "ip_address", "ipaddress:v4")
    for m in _IPV6.finditer(text):
        candidate = m.group()
        groups = [g for g in re.split(r":+", candidate) if g]
        # "a::b" is a valid address but far more often code: ask for a group of 3 characters or more.
        if len(groups) < 2 or max(len(g) for g in groups) < 3:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield Finding(m.start(), m.end(), "ip_address", "ipaddress:v6")


def _secrets(text: str) -> Iterator[Finding]:
    for name, pattern in _SECRETS:
        for m in pattern.finditer(text):
            yield Finding(m.start(), m.end(), "secret", name)
    for m in _HIGH_ENTROPY_CANDIDATE.finditer(text):
        if is_high_entropy(m.group()):
            yield Finding(m.start(), m.end(), "secret", "entropy")


def _resolve(found: list[Finding]) -> list[Finding]:
    """Keep the longest (then the most specific) of overlapping findings; in text order."""
    ranked = sorted(found, key=lambda f: (-(f.end - f.start), -_SPECIFICITY[f.kind], f.start))
    kept: list[Finding] = []
    for f in ranked:
        if f.end > f.start and all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept)


def find(text: str) -> list[Finding]:
    """The personal data and secrets in ``text``: non-overlapping findings, in text order."""
    if not text:
        return []
    found = [*_secrets(text), *_cards(text), *_emails(text), *_ips(text), *_phones(text)]
    return _resolve(found)


def redact(text: str, findings: list[Finding]) -> str:
    """``text`` with each finding's span replaced by its kind's placeholder (``[EMAIL]``, ...).

    Findings may come in any order; one overlapping an earlier-starting one is left out.
    """
    parts: list[str] = []
    pos = 0
    for f in sorted(findings):
        if f.start < pos:
            continue
        parts.append(text[pos:f.start])
        parts.append(PLACEHOLDERS[f.kind])
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


# --- the scan over a store -------------------------------------------------------------------


def message_text(message: Any) -> str | None:
    """A chat message's text: its string content, or its text parts joined by a newline."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content
                 if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


_FINDINGS_SCHEMA = pa.schema([
    ("id", pa.string()), ("message_index", pa.int32()), ("kind", pa.string()),
    ("span_start", pa.int32()), ("span_end", pa.int32()), ("detector", pa.string()),
])

# --- reading a store without holding it -------------------------------------------------------
# Shared by the passes that compute in Python (scan pii here, dedup near in curate.neardup).
def scan(store: Store, *, source: str = "chat") -> ScanResult:
    """Find personal data in every message of the ``chat`` view (or ``source``, a view with ``id``
    and ``messages``), and replace the store's ``pii_findings`` with it, in one transaction.

    The store is held only to copy the messages out (read-only) and to write the findings: not
    while they are searched."""
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    rows = messages = 0
    quoted = '"' + source.replace('"', '""') + '"'
    with store.scratch() as folder:
        unloaded = Path(folder) / "messages.parquet"
        found = Path(folder) / "findings.parquet"
        store.unload(f"select id, messages::varchar as messages from {quoted}", unloaded, row_group_rows=BATCH_SIZE)
        with pq.ParquetFile(unloaded) as reading, pq.ParquetWriter(found, _FINDINGS_SCHEMA) as writing:
            for batch in reading.iter_batches(batch_size=BATCH_SIZE, columns=["id", "messages"]):
                columns: dict[str, list[Any]] = {name: [] for name in _FINDINGS_SCHEMA.names}
                for gid, raw in zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(),
                                    strict=True):
                    rows += 1
                    if raw is None:
                        continue
                    parsed = json.loads(raw)
                    if not isinstance(parsed, list):
                        continue
                    for index, message in enumerate(parsed):
                        messages += 1
                        text = message_text(message)
                        if not text:
                            continue
                        for f in find(text):
                            counts[f.kind] += 1
                            for name, value in (("id", gid), ("message_index", index), ("kind", f.kind),
                                                ("span_start", f.start), ("span_end", f.end),
                                                ("detector", f.detector)):
                                columns[name].append(value)
                if columns["id"]:
                    writing.write_table(pa.table(columns, schema=_FINDINGS_SCHEMA))
        scanned_at = datetime.now(UTC)
        with store.write() as con:
            con.execute("delete from pii_findings")
            con.execute(
                "insert into pii_findings (id, message_index, kind, span_start, span_end, detector, scanned_at) "
                "select id, message_index, kind, span_start, span_end, detector, ? from read_parquet(?)",
                [scanned_at, str(found)],
            )
    return ScanResult(rows=rows, messages=messages, findings={k: counts[k] for k in KINDS if counts[k]},
                      seconds=time.perf_counter() - started)
