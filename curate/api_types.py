"""What curate knows of the shape of inference.net's bodies: a generation's states, and under which
keys each field is found.

inference.net's documentation shows some bodies' keys in camelCase and others' in snake_case
(../shared/docs/inference-api.md: the older reference, and ``webhook.test``, use snake_case), so a
field that has been spelt both ways is read under each spelling.
``ALIASES`` is the one list of those spellings, in the order they are read: the first that holds
a usable value wins. ``records`` builds the store's SQL from it, and ``listen`` reads deliveries
through ``first_str``; no other module is to spell a camelCase key (tests/test_api_types.py checks,
and names the modules that still do).

What counts as usable is the reader's, and the two differ on purpose:

* the store (``first_id``, ``first_value``: records.py's rule in Python) takes an id that is a
  string or a 64-bit integer, an empty string included, and any other field's first non-null
  value; a generation or a webhook whose first id present is some other kind of value is
  refused whole (a group's member falls back to a hash of its text instead);
* the listener (``first_str``) takes only a non-empty string, since what it reads is an id the
  ledger polls or a webhook id it compares.

The store keeps every body raw; nothing here is a stored form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "ALIASES",
    "GENERATION_STATES",
    "TERMINAL_STATES",
    "first_id",
    "first_str",
    "first_value",
    "id_text",
]

GENERATION_STATES = ("Queued", "In Progress", "Success", "Failed")
TERMINAL_STATES = ("Success", "Failed")

# field -> its keys, in the order they are read. A GenerationForClient (``GET /v1/generation/{id}``,
# a completion webhook's ``data``) names itself ``id`` first, but a slow group's member is read
# ``generationId`` first: two orders the store has always used, kept apart so that neither moves.
ALIASES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "id": ("id", "generationId", "generation_id"),  # a GenerationForClient's own id
    "member_id": ("generationId", "generation_id", "id"),  # a slow group's member's id
    "generation_id": ("generationId", "generation_id"),  # a webhook envelope's generation
    "webhook_id": ("webhookId", "webhook_id"),  # a webhook envelope's webhook (a credential)
    "group_id": ("group_id", "groupId"),  # a slow-group envelope's group, a group submit's answer's
    "group_size": ("groupSize", "group_size"),  # a group submit's answer
    "state_message": ("stateMessage", "state_message"),
    "dispatched_at": ("dispatchedAt", "dispatched_at"),
    "finished_at": ("finishedAt", "finished_at"),
})

# The integers DuckDB reads as an id (json_type UBIGINT or BIGINT); one outside them is a DOUBLE.
_ID_INTEGERS = range(-(2**63), 2**64)


def _values(body: object, field: str) -> Iterator[Any]:
    """The values ``body`` (a parsed JSON object; anything else holds none) has under ``field``'s
    keys, in order; absent keys and JSON nulls are skipped (the store sees both as NULL)."""
    if isinstance(body, dict):
        for key in ALIASES[field]:
            value = body.get(key)
            if value is not None:
                yield value


def id_text(value: object) -> str | None:
    """``value`` as the store reads an id: a string as it is, an integer of 64 bits as its digits
    (a bool, a float or a larger integer is no id); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in _ID_INTEGERS:
        return str(value)
    return None


def first_id(body: object, field: str) -> str | None:
    """The id the store reads from ``body`` (a parsed JSON object): the first of ``field``'s keys
    holding a string or a 64-bit integer, as text."""
    return next((text for value in _values(body, field) if (text := id_text(value)) is not None), None)


def first_value(body: object, field: str) -> Any:
    """The value the store reads from ``body`` for a field that is not an id: the first of
    ``field``'s keys holding anything but null (the store reads a non-string as its JSON text)."""
    return next(_values(body, field), None)


def first_str(body: object, field: str) -> str | None:
    """The first of ``field``'s keys in ``body`` holding a non-empty string (the listener's rule)."""
    return next((value for value in _values(body, field) if isinstance(value, str) and value), None)
