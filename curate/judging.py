"""``curate judge``: a judge model scores stored answers by a rubric, each row judged once per rubric and judge.

For each row of SOURCE (``curate.prompts``), one request to the judge model: a system message with
the instructions and the rubric, a user message with the conversation rendered as text (tool
calls and results included, the answer to judge marked), and ``response_format`` asking for a
JSON object ``{"score": 1-10, "rationale": "..."}`` by JSON schema (``--no-response-format`` for a
model that does not take one: the instructions ask for the same object either way). Requests go
through ``curate submit``'s claim-then-send path, never twice.

A request's ``metadata.custom_id`` is ``judge:<rubric hash>:<request digest>:<judged id>``, the
digest covering the whole request less its metadata (instructions, rubric, the conversation as
rendered, the judge model, ``response_format``): one judgment per row and request, so a re-run
judges only rows it has not, and an edited rubric, another judge or a changed conversation
judges again. A judgment that came back Failed or unreadable is asked again only when told
(``retry_failed``), as a new attempt (``submissions.attempt_id``). Its metadata also carries ``curate_task`` = ``judge``,
``curate_judged_id``, ``curate_rubric`` (the name) and ``curate_rubric_hash``.

When the judge's generations are stored (``curate harvest``, ``curate listen``), the
``judgments`` view reads each one's score and rationale, defensively: an answer that is not the
JSON asked for (wrapped in prose or a code fence is fine) keeps its row, with ``parse_error``
saying what is wrong. ``curate stats`` counts them.

Rubrics: a shipped name (``helpfulness``, ``correctness``: ``curate/rubrics/NAME.md``) or any
Markdown file; the name is the file's stem, the hash covers its text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import submissions
from curate.config import Settings
from curate.errors import UsageError
from curate.prompts import Row, render, source_rows
from curate.store import FOREVER, Store
from curate.submit import SubmitOptions, SubmitSummary, submit_requests

__all__ = [
    "INSTRUCTIONS", "RESPONSE_FORMAT", "RUBRICS_DIR", "SCORE_RANGE", "TASK", "JudgeOptions", "JudgeSummary", "Rubric",
    "judge", "request_for", "rubric", "shipped_rubrics",
]

TASK = "judge"  # metadata.curate_task of a judge request
RUBRICS_DIR = Path(__file__).resolve().parent / "rubrics"
SCORE_RANGE = (1, 10)  # the score a judgment gives; queries/judgments.sql checks the same bounds

INSTRUCTIONS = f"""You are a careful, strict evaluator of an AI assistant's answers.
You are given a rubric and a conversation between a user and an assistant (with any tools the
assistant could call, its tool calls and their results). Judge only the assistant's final answer,
marked THE ANSWER TO JUDGE, by the rubric, in the light of the whole conversation.

Reply with one JSON object and nothing else:
{{"score": <an integer from {SCORE_RANGE[0]} to {SCORE_RANGE[1]}>, "rationale": "<one or two sentences saying why>"}}"""

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "judgment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": SCORE_RANGE[0], "maximum": SCORE_RANGE[1]},
                "rationale": {"type": "string"},
            },
            "required": ["score", "rationale"],
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True)
class Rubric:
    """A rubric: its name (the file's stem), its Markdown text, and the hash of that text."""

    name: str
    text: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def shipped_rubrics() -> list[str]:
    """The names of the rubrics curate ships."""
    return sorted(p.stem for p in RUBRICS_DIR.glob("*.md"))


def rubric(name_or_path: str | Path) -> Rubric:
    """The rubric a ``--rubric`` names: a Markdown file, else a shipped rubric's name."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = RUBRICS_DIR / f"{name_or_path}.md"
        if not shipped.is_file():
            raise UsageError(f"--rubric {name_or_path}: no such file, and not a shipped rubric "
                             f"({', '.join(shipped_rubrics())})")
        path = shipped
    try:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--rubric {name_or_path}: cannot be read as UTF-8 text ({exc})") from None
    if not text:
        raise UsageError(f"--rubric {name_or_path}: the file is empty")
    if any(ch < " " and ch not in "\n\t" for ch in text):
        raise UsageError(f"--rubric {name_or_path}: holds control characters (a binary file?); a rubric is Markdown text")
    return Rubric(path.stem, text)


@dataclass(frozen=True, kw_only=True)
class JudgeOptions:
    """Who judges (``model``), by what (``rubric``), which rows (``where``: SQL over SOURCE's columns),
    whether to ask for the JSON by ``response_format``, and how requests are sent (``submit``)."""

    model: str
    rubric: Rubric
    where: str | None = None
    response_format: bool = True
    submit: SubmitOptions = field(default_factory=SubmitOptions)

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise UsageError("--model: give the judge model's name")


@dataclass(frozen=True)
class JudgeSummary:
    """How many rows were read (each one request); what the submit did with them."""

    rows: int
    rubric: str
    rubric_hash: str
    submit: SubmitSummary
    retried: int = 0  # judgments whose every attempt had failed, asked again (--retry-failed)


def request_for(row: Row, options: JudgeOptions, retries: dict[str, int] | None = None) -> dict[str, Any]:
    """The judge request of one row (``retries``: first custom_ids to ask again, with their last attempt)."""
    body: dict[str, Any] = {
        "model": options.model,
        "messages": [
            {"role": "system", "content": f"{INSTRUCTIONS}\n\n# Rubric: {options.rubric.name}\n\n{options.rubric.text}"},
            {"role": "user", "content": render(row.prompt, row.answer, row.tools)},
        ],
        "temperature": 0,
    }
    if options.response_format:
        body["response_format"] = RESPONSE_FORMAT
    first = f"judge:{options.rubric.hash}:{submissions.request_digest(body, 16)}:{row.id}"
    custom_id = submissions.next_attempt(first, retries or {})
    body["metadata"] = {"custom_id": custom_id, "curate_task": TASK, "curate_judged_id": row.id,
                        "curate_rubric": options.rubric.name, "curate_rubric_hash": options.rubric.hash}
    return body


def judge(store: Store, settings: Settings, source: str, options: JudgeOptions, *,
          retry_failed: bool = False) -> JudgeSummary:
    """Send one judge request per row of ``source`` not judged yet by this request (rubric, judge,
    conversation). ``retry_failed``: also ask again, as a new attempt, each judgment whose every
    attempt came back Failed or without a readable score (each attempt is paid for)."""
    counted: dict[str, int] = {}
    retries: dict[str, int] = {}
    if retry_failed:
        with store.read(wait=FOREVER) as con:
            scored = "g.state = 'Success' and g.id in (select judge_generation_id from judgments where score is not null)"
            retries = submissions.failed_attempts(con, "judge:", scored)

    with source_rows(store, source, options.where, include_samples=True) as rows:
        def bodies() -> Iterator[dict[str, Any]]:
            n = retried = 0
            for row in rows():
                if row.answer is None:
                    raise UsageError(f"SOURCE row {row.id}: no answer to judge (its last message is not the "
                                     "assistant's)")
                n += 1
                body = request_for(row, options, retries)
                retried += submissions.RETRY_SEPARATOR in body["metadata"]["custom_id"]
                yield body
            counted["rows"], counted["retried"] = n, retried

        summary = submit_requests(store, settings, bodies,
                                  f"judge:{options.rubric.name}:{options.model}", options.submit)
    return JudgeSummary(rows=counted.get("rows", 0), rubric=options.rubric.name,
                        rubric_hash=options.rubric.hash, submit=summary, retried=counted.get("retried", 0))
