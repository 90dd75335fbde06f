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

``find`` takes time linear in the text, whatever it holds (a webhook may bring a 10 MB message):
each pattern is bounded or cannot step back far, a PEM key's BEGIN and END lines are found apart
and paired, and overlaps are settled in one sorted pass. The comment over the detectors says why
each is so; ``phonenumbers`` is linear too, and the slowest part on digit-dense text.

What a scan reads is every string an export format can ship from a row (``curate.formats``):

- each message's text, ``curate.messages.message_text``, curate's one rule: its ``content`` when
  that is a string, or its text parts (``{"type": "text", "text": "..."}`` whose text is a string)
  joined by ``"\\n"`` when it is a list. A finding there has ``field`` ``'text'``, spans that are
  Python string offsets (code points) into that text, and ``message_index`` the message's position
  in ``chat.messages`` (the answer is the last): what ``--pii redact`` replaces;
- each message's ``role``, ``name`` and ``tool_call_id``, its tool calls whole (``id``, ``type``,
  ``function.name``; ``function.arguments`` parsed as JSON when it is a string, as the export parses
  it, else read as it is) and each content part's ``image_url`` (``url``, ``detail``);
- the row's ``tools`` definitions, ``model`` and ``finish_reason`` (when the source has them).

In those, every string, every object key and every number (as its digits) is read, duplicate keys
included: JSON the export ships as JSON (arguments, tools) keeps them, and a reader may take either.
A finding there has ``message_index`` NULL and ``field`` the path of the string it is in, e.g.
``messages[3].tool_calls[0].function.arguments.to``, ``messages[1].content[0].image_url.url``,
``tools[0].function.description``, ``model`` (a key: the path ending ``#key``), its span offsets
into that string. Such a row cannot be redacted (only message text is), so ``--pii redact`` drops
it, as it drops a row whose finding is in content parts: the export redacts the content of message
``message_index``, and a NULL index names none.

Stored messages are parsed with ``curate.messages.loads_first_wins``: a key repeated in the JSON
text is read as DuckDB reads it, and so as every export format ships it (the first occurrence).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq

# Exported from here too: the scan's spans are offsets into this text (pii.message_text).
from curate.messages import JsonObject, loads_first_wins, message_text

if TYPE_CHECKING:
    from curate.store import Store

__all__ = [
    "KINDS", "PLACEHOLDERS", "TEXT_FIELD", "Finding", "PiiScanSummary", "find", "message_fields", "message_text",
    "redact", "row_fields", "scan",
]

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


# Where a finding in a message's text is (``pii_findings.field``); any other field is a path.
TEXT_FIELD = "text"


@dataclass(frozen=True)
class PiiScanSummary:
    """What one ``scan`` did: chat rows and messages read, findings per kind, and how long it took."""

    rows: int
    messages: int
    findings: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: int = 0  # rows of the source an earlier scan had read as they are (not read again)

    @property
    def total(self) -> int:
        return sum(self.findings.values())


# --- the detectors ---------------------------------------------------------------------------

# Bumped whenever a detector would find something else in some text: rows scanned under an
# older version are scanned again by the next scan (or export). 2: phone numbers past the
# matcher's 65,535th candidate.
DETECTORS_VERSION = 2
#
# Every detector runs in time linear in the text. A message may be 10 MB (webhooks allow it) and
# Python's ``re`` backtracks, so a pattern that can rescan the rest of the text from each of many
# starting points is quadratic: ``[\s\S]*?`` to a PEM END line that never comes took 10 s on
# 200 KB of BEGIN lines. Each pattern below is one of:
#
# - bounded: every quantifier has an upper limit (a card is at most 19 digits, an IPv4 address
#   four groups of at most 3, an e-mail's local part 64 characters, a high-entropy candidate
#   256), so the work from one starting point is a constant;
# - a run held by its lookbehind: an unbounded quantifier over a character class ``C`` behind a
#   lookbehind that refuses a start preceded by a ``C`` character (``(?<![\w-])hf_[A-Za-z0-9]+``)
#   can only start at the head of a run, so the runs its starts scan do not overlap. It is
#   possessive (``{n,}+``, Python 3.11) where what follows cannot be a ``C`` character anyway:
#   the same matches, without stepping back over the run one character at a time on a failure;
# - no backtracking to a far end at all: a PEM private key is found as BEGIN lines and END lines,
#   two separate scans, each BEGIN paired with the first END of its label after it by a binary
#   search (``_private_keys``).
#
# tests/test_pii_linear.py feeds each detector the inputs that were slow; bench/bench_pii.py
# measures the throughput (docs/benchmarks.md, "PII scan in linear time").

# The local part is bounded. The domain repeats labels without limit, but a label holds no "."
# and no "@", so where each label ends is forced: stepping back over them costs a constant per
# label, and the domains after two "@"s do not overlap.
_LOCAL_PART_MAX = 64
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# Seven decimal digits anywhere (``_phones``): ``\D*+`` gives nothing back, one pass at most.
_SEVEN_DIGITS = re.compile(r"(?:\D*+\d){7}")
# Bounded (13 to 19 digits); the lookbehinds let a run of digits start a candidate only once.
# They follow the first digit (``\d(?<!\d\d)`` is ``(?<!\d)\d``) so that ``re`` skips from digit
# to digit instead of trying them at every character: 6 times faster on ordinary text.
_CARD = re.compile(r"\d(?<!\d\d)(?<!\d[ -]\d)(?:[ -]?\d){12,18}(?![ -]?\d)")
# Bounded: four groups of at most 3 digits (the lookbehind after the first digit, as for cards);
# IPv6 at most 8 groups of at most 4 hex digits.
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\w)(?!\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
# A PEM private key: its BEGIN line through the first END line of the same label after it, or
# the BEGIN line alone when there is none: what
#     -----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?:[\s\S]*?-----END \1PRIVATE KEY-----)?
# matched, found without that pattern's scan to the end of the text from each unclosed BEGIN.
# The label's words must be stepped back over (its last word is followed by "PRIVATE KEY", two
# words themselves), but they hold no "-", so the words after one marker end before the next.
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]++ )*)PRIVATE KEY-----")
_PEM_END_MARK = "-----END "
_PEM_END = re.compile(r"-----END ((?:[A-Z0-9]++ )*)PRIVATE KEY-----")
_PEM_END_TAIL = len("PRIVATE KEY-----")
# Each refuses to start in the middle of a run (its lookbehind), and its unbounded run is
# possessive (see above); openai_key's look for a digit skips the run's non-digits possessively
# (the same test as ``[A-Za-z0-9_-]*\d``: the run holds a digit). The lookbehind comes after the
# prefix, over the character before it (``hf_(?<![\w-]hf_)`` is ``(?<![\w-])hf_``): a pattern
# that starts with a literal lets ``re`` skip to the places that hold it, 20-40 times faster on
# ordinary text than trying the lookbehind at every character.
_SECRETS: list[tuple[str, re.Pattern[str]]] = [
    ("jwt", re.compile(r"eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{5,}+\.eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]{10,}+")),
    ("openai_key", re.compile(
        r"sk-(?<![\w-]sk-)(?:proj-|svcacct-|admin-|ant-)?(?=[A-Za-z_-]*+\d)[A-Za-z0-9_-]{20,}+")),
    ("aws_access_key", re.compile(r"(?:AKIA|ASIA)(?<![A-Za-z0-9](?:AKIA|ASIA))[0-9A-Z]{16}(?![A-Za-z0-9])")),
    ("github_token", re.compile(r"g(?<![\w-]g)(?:h[pousr]_[A-Za-z0-9]{36,}+|ithub_pat_[A-Za-z0-9_]{22,}+)")),
    ("slack_token", re.compile(r"xox(?<![\w-]xox)[abpr]-[A-Za-z0-9-]{10,}+")),
    ("google_api_key", re.compile(r"AIza(?<![\w-]AIza)[0-9A-Za-z_-]{35}(?![\w-])")),
    ("stripe_key", re.compile(r"[sr]k_live_(?<![\w-][sr]k_live_)[0-9A-Za-z]{16,}+")),
    ("huggingface_token", re.compile(r"hf_(?<![\w-]hf_)[A-Za-z0-9]{30,}+")),
]
_TOKEN_CHARS = r"A-Za-z0-9+/_\-"
# "=" only as base64 padding at the end, so that "token=<value>" finds the value alone. Bounded
# (at most 256), and possessive: a shorter run would be followed by a token character, refused.
_HIGH_ENTROPY_CANDIDATE = re.compile(
    rf"(?<![{_TOKEN_CHARS}])[{_TOKEN_CHARS}]{{32,256}}+={{0,2}}(?![{_TOKEN_CHARS}=])")
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
    """``_EMAIL.finditer(text)``, skipping the stretches no address can start in.

    An address's "@" is at most 64 characters after its start (the local part's bound), so none
    starts more than 64 characters before the next "@": the search for the next one starts there,
    which is where ``finditer`` would first have found it (the lookbehind still sees the text
    before). Ordinary text has few "@"s, and trying the pattern at every character was most of
    the time an e-mail search took."""
    pos = 0
    while (at := text.find("@", pos)) >= 0:
        m = _EMAIL.search(text, max(pos, at - _LOCAL_PART_MAX))
        if m is None:
            return
        yield Finding(m.start(), m.end(), "email", "regex")
        pos = m.end()


def _has_seven_digits(text: str) -> bool:
    """Whether ``text`` holds 7 characters that are ``str.isdigit()``: a regular expression up to
    the 7th decimal digit (every one is such a character), counting them all one by one only
    when there are fewer and the text is not ASCII (superscripts and the like are digits too)."""
    return _SEVEN_DIGITS.match(text) is not None or (not text.isascii() and sum(map(str.isdigit, text)) >= 7)


def _phones(text: str) -> Iterator[Finding]:
    if not _has_seven_digits(text):  # no phone number is shorter; spares the matcher
        return
    for region in (None, "US"):
        # max_tries: by default the matcher silently gives up after 65,535 candidates, and a phone
        # number after them in a long message would go unfound. A candidate is at least a
        # character, so the text's length bounds the tries and keeps the scan linear.
        matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID,
                                                  max_tries=max(len(text), 65_535))
        for match in matcher:
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


def _private_keys(text: str) -> Iterator[Finding]:
    """PEM private keys: each BEGIN line, through the first END line of its label after it.

    The END lines are found once, by ``str.find`` of their marker (every occurrence, overlapping
    ones too: ``[\\s\\S]*?`` could stop at any of them), and kept per label in text order; each
    BEGIN takes the first at or after its own end by binary search. As with ``finditer``, the
    next BEGIN is looked for after the end of the last key."""
    if "-----BEGIN " not in text:
        return
    ends: dict[str, list[int]] | None = None
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        label, end = begin.group(1), begin.end()
        if ends is None:
            ends = {}
            at = text.find(_PEM_END_MARK)
            while at >= 0:
                if (closing := _PEM_END.match(text, at)) is not None:
                    ends.setdefault(closing.group(1), []).append(at)
                at = text.find(_PEM_END_MARK, at + 1)
        starts = ends.get(label, [])
        i = bisect_left(starts, end)
        if i < len(starts):
            end = starts[i] + len(_PEM_END_MARK) + len(label) + _PEM_END_TAIL
        yield Finding(begin.start(), end, "secret", "private_key")
        pos = end


def _secrets(text: str) -> Iterator[Finding]:
    yield from _private_keys(text)
    for name, pattern in _SECRETS:
        for m in pattern.finditer(text):
            yield Finding(m.start(), m.end(), "secret", name)
    for m in _HIGH_ENTROPY_CANDIDATE.finditer(text):
        if is_high_entropy(m.group()):
            yield Finding(m.start(), m.end(), "secret", "entropy")


def _resolve(found: list[Finding]) -> list[Finding]:
    """Keep the longest (then the most specific, then the earliest) of overlapping findings; in
    text order.

    The findings are sorted by that rank once, and each is kept when none of its characters is
    taken yet by one kept before it: a byte per character of the stretch the findings cover
    answers that with ``bytearray.find`` over the finding's own span. Checking each finding
    against every kept one instead was quadratic (5 s for 15,000 e-mail addresses). The spans
    one pattern finds do not overlap, so the bytes looked at add up to at most the text's length
    per pattern."""
    ranked = sorted((f for f in found if f.end > f.start),
                    key=lambda f: (-(f.end - f.start), -_SPECIFICITY[f.kind], f.start))
    if not ranked:
        return []
    low = min(f.start for f in ranked)
    taken = bytearray(max(f.end for f in ranked) - low)
    kept: list[Finding] = []
    for f in ranked:
        start, end = f.start - low, f.end - low
        if taken.find(1, start, end) < 0:
            taken[start:end] = b"\x01" * (end - start)
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


_FINDINGS_SCHEMA = pa.schema([
    ("id", pa.string()), ("message_index", pa.int32()), ("kind", pa.string()),
    ("span_start", pa.int32()), ("span_end", pa.int32()), ("detector", pa.string()), ("field", pa.string()),
])


# --- the strings of a row that an export can ship, beyond its messages' text ------------------
# curate.formats decides what a format ships: MESSAGE_TYPE (role, content or content parts with
# their image_url, tool_calls, tool_call_id, name), the row's tools, and (catalyst) its model and
# finish_reason. A string value is read by DuckDB as the string; any other JSON value where the
# export reads a string (a role that is an object) as its JSON text: so every string, key and
# number inside counts. tests/test_pii_every_field.py plants a secret in each and exports.


def _path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string, object key and number in ``value`` (a parsed JSON value), as (path, text)."""
    stack = [(value, path)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            yield at, item
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int | float | Decimal):
            yield at, str(item)
        elif isinstance(item, dict):
            pairs = item.pairs if isinstance(item, JsonObject) else list(item.items())
            for key, child in reversed(pairs):
                inner = _path(at, key)
                stack.append((child, inner))
                stack.append((key, inner + "#key"))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]") for i, child in reversed(list(enumerate(item))))


def _loads(text: str) -> Any:
    # Numbers keep their digits (a float would round a card number written 4111111111111111.0).
    return loads_first_wins(text, parse_float=Decimal)


def _json_text(text: str, path: str) -> Iterator[tuple[str, str]]:
    """The strings of JSON ``text`` (tools, tool-call arguments), or ``text`` itself when it does not parse."""
    try:
        parsed = _loads(text)
    except (ValueError, RecursionError):
        yield path, text
        return
    yield from _strings(parsed, path)


def _tool_calls(calls: Any, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(calls, list):
        yield from _strings(calls, path)
        return
    for i, call in enumerate(calls):
        at = f"{path}[{i}]"
        if not isinstance(call, dict):
            yield from _strings(call, at)
            continue
        for key, value in call.pairs if isinstance(call, JsonObject) else call.items():
            if key == "function" and isinstance(value, dict):
                fn = _path(at, key)
                for fkey, fvalue in value.pairs if isinstance(value, JsonObject) else value.items():
                    # Arguments sent as a JSON string are exported parsed (escapes decoded).
                    if fkey == "arguments" and isinstance(fvalue, str):
                        yield from _json_text(fvalue, _path(fn, fkey))
                    else:
                        yield from _strings(fvalue, _path(fn, fkey))
            else:
                yield from _strings(value, _path(at, key))


def message_fields(index: int, message: Any) -> Iterator[tuple[str, str]]:
    """The strings of one parsed message an export can ship besides its text, as (path, text)."""
    if not isinstance(message, dict):
        return
    at = f"messages[{index}]"
    for key in ("role", "name", "tool_call_id"):
        if key in message:
            yield from _strings(message[key], _path(at, key))
    if "tool_calls" in message:
        yield from _tool_calls(message["tool_calls"], _path(at, "tool_calls"))
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and "image_url" in part:
                yield from _strings(part["image_url"], f"{at}.content[{j}].image_url")


def row_fields(row: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The row's own strings an export can ship: its tools (JSON text), model and finish_reason."""
    if row.get("tools") is not None:
        yield from _json_text(row["tools"], "tools")
    for key in ("model", "finish_reason"):
        if row.get(key) is not None:
            yield key, row[key]


# Short strings (roles, tool names, ids) come back in row after row: their findings are kept.
_MEMO_LIMIT = 100_000
_MEMO_CHARS = 256
_NO_FINDING_BELOW = 6  # no detector finds anything in fewer characters ("a@b.co", "a::abc")


class _FieldFinder:
    def __init__(self) -> None:
        self.memo: dict[str, list[Finding]] = {}

    def __call__(self, text: str) -> list[Finding]:
        if len(text) < _NO_FINDING_BELOW:
            return []
        if len(text) > _MEMO_CHARS:
            return find(text)
        found = self.memo.get(text)
        if found is None:
            if len(self.memo) >= _MEMO_LIMIT:
                self.memo.clear()
            found = self.memo[text] = find(text)
        return found

# --- reading a store without holding it -------------------------------------------------------
# Shared by the passes that compute in Python (scan pii here, dedup near in curate.neardup).

PASS = "pii"
# Bumped when what a scan records changes in a way the detectors' text does not show.
# 2: every field an export ships (tool calls, names, image URLs, tools, model), and messages
# parsed as DuckDB parses them (a repeated key's first occurrence).
SCAN_VERSION = 2


def scan_settings(source: str = "chat") -> str:
    """The digest of what a scan's findings depend on: the detectors' version, the phonenumbers
    library's (its metadata decides what is a valid number), the scan's version and the ``source``
    scanned. A row scanned under another digest is scanned again by the next scan (or export)."""
    parts = (DETECTORS_VERSION, phonenumbers.__version__, SCAN_VERSION, source)
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _quoted(source: str) -> str:
    return '"' + source.replace('"', '""') + '"'


# The row's own columns an export ships besides its messages, read when the source has them.
_ROW_COLUMNS = ("tools", "model", "finish_reason")


def _source_columns(store: Store, source: str) -> list[str]:
    return [name for name in store.arrow(f"select * from {_quoted(source)} limit 0").schema.names
            if name in _ROW_COLUMNS]


def _rows_sql(source: str, row_columns: list[str] | tuple[str, ...] = ()) -> str:
    # Each row of the source with the body it comes from: the generation's raw_hash, else (a view
    # of rows that are not generations) the hash of its messages.
    extra = "".join(f", s.{name}::varchar as {name}" for name in row_columns)
    return (f"select s.id::varchar as id, coalesce(g.raw_hash, hash(s.messages::varchar)) as raw_hash, "
            f"s.messages::varchar as messages{extra} from {_quoted(source)} s "
            f"left join generation_rows g on g.id = s.id::varchar")


def _pending_sql(source: str, settings: str, row_columns: list[str] | tuple[str, ...] = ()) -> str:
    return (f"select r.* from ({_rows_sql(source, row_columns)}) r where not exists (select 1 from pass_coverage p "
            f"where p.pass = '{PASS}' and p.id = r.id and p.raw_hash = r.raw_hash and p.settings = '{settings}')")


def pending(store: Store, *, source: str = "chat") -> int:
    """How many rows of ``source`` no scan with the current detectors has read (new or changed rows)."""
    rows = store.arrow(f"select count(*) as n from ({_pending_sql(source, scan_settings(source))})").to_pylist()
    return int(rows[0]["n"])


def scan(store: Store, *, source: str = "chat", full: bool = False) -> PiiScanSummary:
    """Find personal data in the messages of the ``chat`` view (or ``source``, a view with ``id``
    and ``messages``) that no earlier scan has read, and record them in ``pii_findings``.

    A row counts as read (``pass_coverage``) with the body it had and the detectors that read it:
    a new row, a row whose body changed, and every row once the detectors change, are scanned;
    the others are not read again (``full``: scan every row and replace all findings). A rescanned
    row's earlier findings are replaced; findings of rows gone from the store are removed. Findings
    of rows no recorded scan read (written before scans recorded what they read) are kept.

    The store is held only to copy the messages out (read-only) and to write the findings, in one
    transaction: not while they are searched."""
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    rows = messages = 0
    settings = scan_settings(source)
    with store.scratch() as folder:
        unloaded = Path(folder) / "messages.parquet"
        found = Path(folder) / "findings.parquet"
        everyone = Path(folder) / "ids.parquet"
        store.unload(f"select id::varchar as id from {_quoted(source)}", everyone)
        row_columns = _source_columns(store, source)
        todo_sql = (f"select * from ({_rows_sql(source, row_columns)})" if full
                    else _pending_sql(source, settings, row_columns))
        store.unload(todo_sql, unloaded, row_group_rows=BATCH_SIZE)
        scanned_ids: list[str] = []
        scanned_hashes: list[int] = []
        find_field = _FieldFinder()
        with pq.ParquetFile(unloaded) as reading, pq.ParquetWriter(found, _FINDINGS_SCHEMA) as writing:
            for batch in reading.iter_batches(batch_size=BATCH_SIZE,
                                              columns=["id", "raw_hash", "messages", *row_columns]):
                columns: dict[str, list[Any]] = {name: [] for name in _FINDINGS_SCHEMA.names}

                def record(gid: str, index: int | None, where: str, findings: list[Finding],
                           columns: dict[str, list[Any]] = columns) -> None:
                    for f in findings:
                        counts[f.kind] += 1
                        for name, value in (("id", gid), ("message_index", index), ("kind", f.kind),
                                            ("span_start", f.start), ("span_end", f.end),
                                            ("detector", f.detector), ("field", where)):
                            columns[name].append(value)

                scanned_ids.extend(batch.column("id").to_pylist())
                scanned_hashes.extend(batch.column("raw_hash").to_pylist())
                for row in batch.to_pylist():
                    rows += 1
                    gid, raw = row["id"], row["messages"]
                    for where, value in row_fields(row):
                        record(gid, None, where, find_field(value))
                    if raw is None:
                        continue
                    parsed = _loads(raw)
                    if not isinstance(parsed, list):
                        continue
                    for index, message in enumerate(parsed):
                        messages += 1
                        text = message_text(message)
                        if text:
                            record(gid, index, TEXT_FIELD, find(text))
                        for where, value in message_fields(index, message):
                            record(gid, None, where, find_field(value))
                if columns["id"]:
                    writing.write_table(pa.table(columns, schema=_FINDINGS_SCHEMA))
        scanned = pa.table({"id": pa.array(scanned_ids, pa.string()),
                            "raw_hash": pa.array(scanned_hashes, pa.uint64())})
        scanned_at = datetime.now(UTC)
        with store.write() as con:
            con.register("_curate_scanned", scanned)
            try:
                if full:
                    con.execute("delete from pii_findings")
                    con.execute(f"delete from pass_coverage where pass = '{PASS}'")
                else:
                    # Rows gone from the source, and rows read again: their findings and coverage go.
                    con.execute("delete from pii_findings where id not in (select id from read_parquet(?))",
                                [str(everyone)])
                    con.execute(f"delete from pass_coverage where pass = '{PASS}' "
                                "and id not in (select id from read_parquet(?))", [str(everyone)])
                    con.execute(f"""delete from pii_findings where id in (
                                        select p.id from pass_coverage p join _curate_scanned s using (id)
                                        where p.pass = '{PASS}')""")
                    con.execute(f"delete from pass_coverage where pass = '{PASS}' "
                                "and id in (select id from _curate_scanned)")
                # A finding a pre-coverage scan (or a hand) already recorded is not recorded twice.
                con.execute(
                    "insert into pii_findings (id, message_index, kind, span_start, span_end, detector, field, "
                    "scanned_at) select f.id, f.message_index, f.kind, f.span_start, f.span_end, f.detector, "
                    "f.field, ? from read_parquet(?) f where not exists (select 1 from pii_findings o "
                    "where o.id = f.id and o.message_index is not distinct from f.message_index "
                    "and o.field = f.field and o.kind = f.kind and o.span_start = f.span_start "
                    "and o.span_end = f.span_end)",
                    [scanned_at, str(found)],
                )
                con.execute("insert into pass_coverage (pass, id, raw_hash, settings, scanned_at) "
                            f"select '{PASS}', id, raw_hash, ?, ? from _curate_scanned", [settings, scanned_at])
                con.execute(f"delete from pass_settings where pass = '{PASS}'")
                con.execute(f"insert into pass_settings values ('{PASS}', ?, ?, ?)",
                            [settings, json.dumps({"source": source, "version": SCAN_VERSION}), scanned_at])
            finally:
                con.unregister("_curate_scanned")
        skipped = int(pq.ParquetFile(everyone).metadata.num_rows) - rows
    return PiiScanSummary(rows=rows, messages=messages, findings={k: counts[k] for k in KINDS if counts[k]},
                      seconds=time.perf_counter() - started, skipped=max(skipped, 0))
