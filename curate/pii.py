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

A message's text is ``curate.messages.message_text``, curate's one rule: its ``content`` when
that is a string, or its text parts (``{"type": "text", "text": "..."}`` whose text is a string)
joined by ``"\\n"`` when it is a list. Spans are Python string offsets (code points) into that
text, and ``message_index`` is the message's position in ``chat.messages`` (the answer is the
last). Tool-call arguments and other keys are not scanned.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq

# Exported from here too: the scan's spans are offsets into this text (pii.message_text).
from curate.messages import message_text

if TYPE_CHECKING:
    from curate.store import Store

__all__ = ["KINDS", "PLACEHOLDERS", "Finding", "PiiScanSummary", "find", "message_text", "redact", "scan"]

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
    ("span_start", pa.int32()), ("span_end", pa.int32()), ("detector", pa.string()),
])

# --- reading a store without holding it -------------------------------------------------------
# Shared by the passes that compute in Python (scan pii here, dedup near in curate.neardup).

PASS = "pii"
# Bumped when what a scan records changes in a way the detectors' text does not show.
SCAN_VERSION = 1


def scan_settings(source: str = "chat") -> str:
    """The digest of what a scan's findings depend on: the detectors' version, the phonenumbers
    library's (its metadata decides what is a valid number), the scan's version and the ``source``
    scanned. A row scanned under another digest is scanned again by the next scan (or export)."""
    parts = (DETECTORS_VERSION, phonenumbers.__version__, SCAN_VERSION, source)
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _quoted(source: str) -> str:
    return '"' + source.replace('"', '""') + '"'


def _rows_sql(source: str) -> str:
    # Each row of the source with the body it comes from: the generation's raw_hash, else (a view
    # of rows that are not generations) the hash of its messages.
    return (f"select s.id::varchar as id, coalesce(g.raw_hash, hash(s.messages::varchar)) as raw_hash, "
            f"s.messages::varchar as messages from {_quoted(source)} s "
            f"left join generation_rows g on g.id = s.id::varchar")


def _pending_sql(source: str, settings: str) -> str:
    return (f"select r.* from ({_rows_sql(source)}) r where not exists (select 1 from pass_coverage p "
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
        todo_sql = f"select * from ({_rows_sql(source)})" if full else _pending_sql(source, settings)
        store.unload(todo_sql, unloaded, row_group_rows=BATCH_SIZE)
        scanned_ids: list[str] = []
        scanned_hashes: list[int] = []
        with pq.ParquetFile(unloaded) as reading, pq.ParquetWriter(found, _FINDINGS_SCHEMA) as writing:
            for batch in reading.iter_batches(batch_size=BATCH_SIZE, columns=["id", "raw_hash", "messages"]):
                columns: dict[str, list[Any]] = {name: [] for name in _FINDINGS_SCHEMA.names}
                scanned_ids.extend(batch.column("id").to_pylist())
                scanned_hashes.extend(batch.column("raw_hash").to_pylist())
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
                    "insert into pii_findings (id, message_index, kind, span_start, span_end, detector, scanned_at) "
                    "select f.id, f.message_index, f.kind, f.span_start, f.span_end, f.detector, ? "
                    "from read_parquet(?) f where not exists (select 1 from pii_findings o where o.id = f.id "
                    "and o.message_index = f.message_index and o.kind = f.kind and o.span_start = f.span_start "
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
