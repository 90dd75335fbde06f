"""Heuristic signals of a chat row's answer, with no API: refusal, repetition, truncation, emptiness,
language and length (``curate score``).

``measure(text, finish_reason)`` computes the signals of one answer; ``score(store)`` measures
every row of the ``chat`` view that is not yet scored as it is now and records them in the
store's ``signal_rows`` table (read through the ``signals`` view, queries/signals.sql); and
``pending(store)`` counts the rows a ``score`` would measure.

**The answer** is the last message of ``chat.messages`` (the model's, ``choices[0].message``),
and its text is ``curate.messages.message_text``: curate's one rule (the content string, or the
text parts joined by a newline). An answer of tool calls alone has no text.

**Words** are what ``_WORD`` finds: maximal runs of letters, digits and underscores (Unicode),
except that each Chinese or Japanese character (Han, hiragana, katakana) is a word of its own,
as those scripts put no spaces between words. Punctuation and whitespace are not words.

The signals, each a column of ``signal_rows`` (``SIGNALS_VERSION`` is bumped whenever one of
these definitions changes, and every row is then scored again):

- ``refusal``, ``refusal_phrase``: the answer *starts* with a refusal: after leading whitespace,
  quotes and markup (anything that is not a letter or digit), optionally after up to two
  apology lead-ins (``REFUSAL_LEADS``: "I'm sorry", "Unfortunately", "Leider", ...; each may be
  followed by punctuation, markup and "but"), one of the phrases of ``REFUSAL_PHRASES`` follows, ending
  at a word boundary. Matching is case-insensitive (lower-cased), on the first
  ``REFUSAL_HEAD_CHARS`` (300) characters, with curly apostrophes read as ``'`` and runs of whitespace
  as one space. English phrases also match their uncontracted forms (``_CONTRACTIONS``):
  ``can't`` matches ``cannot`` and ``can not``, ``i'm`` ``i am``, ``won't`` ``will not``, and
  ``don't``, ``isn't``, ``that's`` likewise.
  ``refusal_phrase`` is the phrase as listed (NULL when there is none). Only the start is read:
  a refusal in the middle of an answer is not found, and a phrase that could open a helpful
  answer ("I can't stress enough...", "I can't help but notice...", "I'm sorry for the
  confusion, here is...") is not listed.
- ``repetition``: the share of the answer's word ``REPETITION_NGRAM``-grams (4-grams, lower-cased)
  that repeat an earlier one: ``1 - distinct / total``, the rep-4 of Welleck et al. (2019). 0 for
  an answer of fewer than ``REPETITION_NGRAM`` words; near 1 for a model stuck in a loop.
- ``truncated``: ``finish_reason = 'length'`` (the model hit its token limit).
- ``empty``: the answer's text is empty or whitespace only (tool calls alone, no content).
- ``short``: not empty and fewer than ``SHORT_WORDS`` (5) words.
- ``language``, ``language_score``: py3langid's language (an ISO 639-1 code, ``en``, ``fr``...;
  the library ships its model in its wheel, loaded once, when first needed) of the answer's
  first ``LANGUAGE_CHARS`` (2,000) characters, and its probability (0 to 1, ``norm_probs``).
  NULL for an empty or short answer: too few words to tell.
- ``answer_chars``: the text's length in characters (code points); ``answer_words``: its words.

Scoring is linear in the data: the answers are copied out of the store in one read-only query
(``Store.unload``), measured in batches of ``BATCH_SIZE`` rows with nothing held, and written in
one transaction; no statement runs per row.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.messages import loads_first_wins, message_text

if TYPE_CHECKING:
    from curate.store import Store

__all__ = [
    "LANGUAGE_CHARS", "REFUSAL_LEADS", "REFUSAL_PHRASES", "REPETITION_NGRAM", "SHORT_WORDS", "SIGNALS_VERSION",
    "ScoreSummary", "Signals", "language", "measure", "pending", "refusal", "repetition", "score",
    "words",
]

# Bumped whenever a signal's definition (this module's docstring) changes, the phrase lists and
# py3langid's model included: rows scored under an older version are scored again.
SIGNALS_VERSION = 1

REPETITION_NGRAM = 4
SHORT_WORDS = 5
# py3langid reads this many characters of an answer at most: its accuracy is flat well before,
# and its pure-Python byte walk is most of a score's time (a 10 MB answer would take a second).
LANGUAGE_CHARS = 2000
REFUSAL_HEAD_CHARS = 300
BATCH_SIZE = 5000

# --- refusal phrases: the one place they are listed ---------------------------------------------
# Lower case, straight apostrophes. A lead-in is an apology that may open a refusal; a phrase is
# the refusal itself. Each phrase is specific enough not to open a helpful answer.

REFUSAL_LEADS: dict[str, tuple[str, ...]] = {
    "en": ("i'm sorry", "i'm so sorry", "i'm really sorry", "sorry", "i apologize", "i apologise",
           "unfortunately", "as an ai language model", "as an ai assistant", "as an ai"),
    "fr": ("je suis désolé", "je suis désolée", "désolé", "désolée", "malheureusement", "je regrette"),
    "de": ("es tut mir leid", "tut mir leid", "leider", "entschuldigung"),
    "es": ("lo siento", "lo lamento", "lamentablemente", "disculpa", "disculpe", "perdón"),
    "it": ("mi dispiace", "purtroppo", "spiacente"),
    "pt": ("desculpe", "desculpa", "lamento", "infelizmente", "sinto muito"),
}

REFUSAL_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "i can't help with", "i can't help you with", "i can't assist", "i can't provide", "i can't comply",
        "i can't fulfill", "i can't fulfil", "i can't do that", "i can't create", "i can't generate",
        "i can't write that", "i can't support", "i can't share", "i can't engage", "i can't participate",
        "i can't and won't", "i won't help", "i won't be able to help", "i won't be able to assist",
        "i won't provide", "i won't assist", "i'm unable to help", "i'm unable to assist", "i'm unable to provide",
        "i'm unable to comply", "i'm unable to fulfill", "i'm not able to help", "i'm not able to assist",
        "i'm not able to provide", "i'm not going to help", "i'm not going to provide", "i must decline",
        "i have to decline", "i need to decline", "i must refuse", "that's not something i can help with",
        "this isn't something i can help with", "i'm not comfortable", "i don't feel comfortable",
    ),
    "fr": (
        "je ne peux pas vous aider", "je ne peux pas t'aider", "je ne peux pas aider", "je ne peux pas fournir",
        "je ne peux pas répondre à cette demande", "je ne peux pas accéder à cette demande",
        "je ne peux pas satisfaire", "je ne suis pas en mesure de", "je dois refuser",
    ),
    "de": (
        "ich kann dir dabei nicht helfen", "ich kann ihnen dabei nicht helfen", "ich kann dabei nicht helfen",
        "ich kann ihnen nicht helfen", "ich kann dir nicht helfen", "ich kann diese anfrage nicht",
        "kann ich dir dabei nicht helfen", "kann ich ihnen dabei nicht helfen", "kann ich dabei nicht helfen",
        "kann ich ihnen nicht helfen", "kann ich dir nicht helfen", "kann ich diese anfrage nicht",
        "ich bin nicht in der lage", "bin ich nicht in der lage", "ich muss ablehnen", "muss ich ablehnen",
    ),
    "es": (
        "no puedo ayudarte con", "no puedo ayudarle con", "no puedo ayudar con", "no puedo proporcionar",
        "no puedo cumplir", "no puedo asistir", "no puedo hacer eso", "no estoy en condiciones de",
        "no me es posible ayudar", "debo rechazar",
    ),
    "it": (
        "non posso aiutarti", "non posso aiutarla", "non posso aiutare", "non posso fornire",
        "non posso soddisfare", "non sono in grado di", "devo rifiutare",
    ),
    "pt": (
        "não posso ajudar", "não posso te ajudar", "não posso fornecer", "não posso atender",
        "não consigo ajudar", "não sou capaz de", "devo recusar",
    ),
}

# The other forms an English phrase also matches (the text is lower-cased first).
_CONTRACTIONS = {"can't": "(?:can't|cannot|can not)", "i'm": "(?:i'm|i am)", "won't": "(?:won't|will not)",
                 "don't": "(?:don't|do not)", "isn't": "(?:isn't|is not)", "that's": "(?:that's|that is)"}
_BUT = ("but", "however", "mais", "aber", "pero", "ma", "mas", "però")


def _phrase_pattern(phrase: str) -> str:
    return " ".join(_CONTRACTIONS.get(word, re.escape(word)) for word in phrase.split(" "))


def _refusal_regex() -> tuple[re.Pattern[str], list[str]]:
    # Every phrase is a named group (p0, p1...): m.lastgroup says which matched. Longer phrases
    # first, so that a phrase another extends is tried after it.
    phrases = sorted({p for listed in REFUSAL_PHRASES.values() for p in listed}, key=lambda p: (-len(p), p))
    leads = sorted({p for listed in REFUSAL_LEADS.values() for p in listed}, key=lambda p: (-len(p), p))
    lead = (f"(?:(?:{'|'.join(map(_phrase_pattern, leads))})(?!\\w)[\\W_]*"
            f"(?:(?:{'|'.join(_BUT)})(?!\\w)[\\W_]*)?)")
    body = "|".join(f"(?P<p{i}>{_phrase_pattern(p)})" for i, p in enumerate(phrases))
    return re.compile(f"{lead}{{0,2}}(?:{body})(?!\\w)"), phrases


_REFUSAL, _REFUSAL_PHRASES = _refusal_regex()
_LEADING = re.compile(r"[\W_]+")
_SPACES = re.compile(r"\s+")
_APOSTROPHES = ("\u2019", "\u2018", "\u02bc", "`")


def refusal(text: str) -> str | None:
    """The refusal phrase (as listed in ``REFUSAL_PHRASES``) the answer ``text`` starts with, else None."""
    head = text[:REFUSAL_HEAD_CHARS].lower()
    for apostrophe in _APOSTROPHES:  # str.replace per character: translate() is ten times slower here
        head = head.replace(apostrophe, "'")
    head = _SPACES.sub(" ", head)
    lead = _LEADING.match(head)
    m = _REFUSAL.match(head, lead.end() if lead else 0)
    if m is None or m.lastgroup is None:
        return None
    return _REFUSAL_PHRASES[int(m.lastgroup[1:])]


# --- words, repetition, language ------------------------------------------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (see the module's docstring)."""
    return _WORD.findall(text.lower())


def repetition(tokens: list[str], n: int = REPETITION_NGRAM) -> float:
    """The share of the word ``n``-grams of ``tokens`` that repeat an earlier one (0 below ``n`` words)."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(tokens[i:] for i in range(n)), strict=False)))
    return (total - distinct) / total


@functools.cache
def _identifier() -> Any:
    # Loaded once, on first use: the model takes about a second to read, and most commands never need it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # type: ignore[import-untyped]

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str) -> tuple[str, float]:
    """py3langid's language of the first ``LANGUAGE_CHARS`` characters of ``text``, and its probability."""
    code, probability = _identifier().classify(text[:LANGUAGE_CHARS])
    return str(code), float(probability)


# --- the signals of one answer -------------------------------------------------------------------


@dataclass(frozen=True)
class Signals:
    """What ``measure`` found in one answer (the columns of ``signal_rows`` but id, hash and version)."""

    refusal: bool
    refusal_phrase: str | None
    repetition: float
    truncated: bool
    empty: bool
    short: bool
    language: str | None
    language_score: float | None
    answer_chars: int
    answer_words: int


def measure(text: str, finish_reason: str | None = None) -> Signals:
    """The signals of an answer whose text is ``text`` and which finished for ``finish_reason``."""
    tokens = words(text)
    empty = not text.strip()
    short = not empty and len(tokens) < SHORT_WORDS
    phrase = None if empty else refusal(text)
    code, probability = (None, None) if empty or short else language(text)
    return Signals(
        refusal=phrase is not None, refusal_phrase=phrase, repetition=repetition(tokens),
        truncated=finish_reason == "length", empty=empty, short=short, language=code,
        language_score=probability, answer_chars=len(text), answer_words=len(tokens),
    )


# --- scoring a store ---------------------------------------------------------------------------------

_SCHEMA = pa.schema([
    ("id", pa.string()), ("raw_hash", pa.uint64()), ("refusal", pa.bool_()), ("refusal_phrase", pa.string()),
    ("repetition", pa.float64()), ("truncated", pa.bool_()), ("empty", pa.bool_()), ("short", pa.bool_()),
    ("language", pa.string()), ("language_score", pa.float64()), ("answer_chars", pa.int64()),
    ("answer_words", pa.int64()),
])
_SIGNAL_COLUMNS = _SCHEMA.names[2:]


@dataclass(frozen=True)
class ScoreSummary:
    """What one ``score`` did: rows measured now and what they showed, rows already scored, time taken."""

    rows: int
    skipped: int = 0  # chat rows scored before, as they are now, by this version (not read again)
    refusals: int = 0
    truncated: int = 0
    empty: int = 0
    short: int = 0
    languages: dict[str, int] = field(default_factory=dict)  # of the rows measured now, most frequent first
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# Each row of chat with the body it comes from and its answer (the last message) alone: the
# request's messages are not copied out.
_ROWS_SQL = ("select c.id::varchar as id, g.raw_hash, json_extract(c.messages, '$[#-1]')::varchar as answer, "
             "c.finish_reason::varchar as finish_reason from chat c join generation_rows g on g.id = c.id::varchar")


def _scored(row: str = "r") -> str:
    """SQL: whether the chat row ``row`` is scored as it is now, by this version."""
    return (f"exists (select 1 from signal_rows s where s.id = {row}.id and s.raw_hash = {row}.raw_hash "
            f"and s.version = {SIGNALS_VERSION})")


def _todo_sql(full: bool) -> str:
    # Every chat row once, with whether it is scored already; the answer only of those that are
    # not: one pass over chat gives both the rows to measure and the count of the others.
    return (f"select id, raw_hash, finish_reason, case when scored then null else answer end as answer, scored "
            f"from (select r.*, {'false' if full else _scored()} as scored from ({_ROWS_SQL}) r)")


def pending(store: Store) -> int:
    """How many chat rows ``score`` would measure: new, changed since scored, or scored by an older version."""
    rows = store.arrow(f"select count(*) as n from ({_ROWS_SQL}) r where not {_scored()}").to_pylist()
    return int(rows[0]["n"])


def _measure_batch(batch: pa.RecordBatch) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in _SIGNAL_COLUMNS}
    for answer, finish_reason in zip(batch.column("answer").to_pylist(), batch.column("finish_reason").to_pylist(),
                                     strict=True):
        text = message_text(loads_first_wins(answer)) if answer is not None else ""
        signals = measure(text, finish_reason)
        for name in _SIGNAL_COLUMNS:
            columns[name].append(getattr(signals, name))
    return pa.table({"id": batch.column("id"), "raw_hash": batch.column("raw_hash"), **columns}, schema=_SCHEMA)


def score(store: Store, *, full: bool = False) -> ScoreSummary:
    """Measure the signals of every ``chat`` row not yet scored as it is now, into ``signal_rows``.

    A row is scored with the body it had (``raw_hash``) and ``SIGNALS_VERSION``: a new row, a row
    whose body changed, and every row once the version changes are measured; the others are not
    read again (``full``: measure every row). A row measured again replaces its earlier signals;
    the signals of generations gone from the store, or changed since, are removed.

    The store is held only to copy the answers out (read-only) and to write the signals, in one
    transaction: not while they are measured."""
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    rows = 0
    with store.scratch() as folder:
        unloaded = Path(folder) / "answers.parquet"
        measured = Path(folder) / "signals.parquet"
        skipped = 0
        store.unload(_todo_sql(full), unloaded, row_group_rows=BATCH_SIZE)
        with pq.ParquetFile(unloaded) as reading, pq.ParquetWriter(measured, _SCHEMA) as writing:
            for batch in reading.iter_batches(batch_size=BATCH_SIZE):
                scored = batch.column("scored")
                skipped += int(pc.sum(scored).as_py() or 0)
                table = _measure_batch(batch.filter(pc.invert(scored)))
                writing.write_table(table)
                rows += table.num_rows
                for name in ("refusal", "truncated", "empty", "short"):
                    counts[name] += int(pc.sum(table.column(name)).as_py() or 0)
                languages.update(code for code in table.column("language").to_pylist() if code is not None)
        scored_at = datetime.now(UTC)
        with store.write() as con:
            # Signals of a body no longer stored (the generation is gone or changed) are stale.
            con.execute("delete from signal_rows s where not exists "
                        "(select 1 from generation_rows g where g.id = s.id and g.raw_hash = s.raw_hash)")
            con.execute("delete from signal_rows where id in (select id from read_parquet(?))", [str(measured)])
            con.execute(f"insert into signal_rows (id, raw_hash, version, {', '.join(_SIGNAL_COLUMNS)}, scored_at) "
                        f"select id, raw_hash, {SIGNALS_VERSION}, {', '.join(_SIGNAL_COLUMNS)}, ? "
                        "from read_parquet(?)", [scored_at, str(measured)])
    return ScoreSummary(
        rows=rows, skipped=skipped, refusals=counts["refusal"], truncated=counts["truncated"],
        empty=counts["empty"], short=counts["short"], languages=dict(languages.most_common()),
        seconds=time.perf_counter() - started,
    )
