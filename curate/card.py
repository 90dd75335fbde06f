"""The dataset card's text: its YAML front matter, its prose, and the block of prose curate writes.

A card is a ``README.md``: front matter between two ``---`` lines, then Markdown. curate writes its
prose between two marker lines, :data:`START` and :data:`END`; everything outside that block is the
user's and is never rewritten. This module only handles text (no files, no network), so an export
and a publish merge cards the same way.

How :func:`merge` combines an existing card (from the Hub, or hand-edited on disk) with a freshly
generated one:

- **Prose.** The generated block replaces the existing block in place: what comes before and after
  it is kept byte for byte. An existing card without a block keeps its prose first, then gets the
  block after a blank line. An existing card with no prose at all (or no card) takes the generated
  body whole.
- **Front matter.** The generated card's keys come first, in its order, with its values: curate
  owns ``configs``, ``dataset_info`` and whatever else it writes. Then come the keys only the
  existing card has (``language``, ``pretty_name``, ``size_categories``, ...), in their order.
  Three exceptions: a generated value of ``null`` counts as unset; a generated ``license: other``
  (curate's placeholder) gives way to a license set by hand; ``tags`` are the generated tags, then
  the existing ones curate did not set, so tags added by hand survive.

Merging is idempotent: ``merge(merge(e, g), g) == merge(e, g)``.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["END", "START", "block", "compose", "merge", "split"]

START = "<!-- curate:generated:start -->"
END = "<!-- curate:generated:end -->"

# The license curate writes when it does not know one; a real one set by hand is worth more.
PLACEHOLDER_LICENSE = "other"
_FENCE = "---"


def split(text: str) -> tuple[dict[str, Any], str]:
    """The card's front matter (``{}`` when it has none) and its body, the text after the front matter.

    Raises ValueError when the front matter is not closed, is not valid YAML (naming the line, counted
    in the whole card), or is not a mapping.
    """
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip() != _FENCE:
        return {}, text
    for end, line in enumerate(lines[1:], start=1):
        if line.rstrip() == _FENCE:
            break
    else:
        raise ValueError("the front matter opened by '---' on line 1 has no closing '---' line")
    try:
        header = yaml.safe_load("".join(lines[1:end]))
    except yaml.MarkedYAMLError as exc:
        # The mark counts from 0 within the YAML; the card has the opening fence before it.
        line_number = exc.problem_mark.line + 2 if exc.problem_mark else "?"
        raise ValueError(f"front matter, line {line_number}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"front matter: {exc}") from None
    if header is None:
        header = {}
    if isinstance(header, dict):
        return header, "".join(lines[end + 1:])
    # A ValueError, not a TypeError: the card's text is wrong, not the caller's argument.
    raise ValueError(f"front matter must be a mapping of keys to values, not a {type(header).__name__}")


def compose(header: dict[str, Any], body: str) -> str:
    """A card from front matter and a body; an empty header gives the body alone (no empty ``{}`` block)."""
    if not header:
        return body
    return f"{_FENCE}\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}{_FENCE}\n{body}"


def block(text: str) -> str | None:
    """curate's block in a card or body, markers included; None when there is none.

    Raises ValueError when the markers do not make exactly one block: an unmatched marker would make
    the next merge replace the user's prose, so it is refused rather than guessed at.
    """
    span = _block_span(text)
    return None if span is None else text[span[0]:span[1]]


def merge(existing: str, generated: str) -> str:
    """A new card: the freshly ``generated`` one's block and keys, the ``existing`` one's own prose and keys.

    ``existing`` may be empty (no card yet). The rules are in this module's docstring. Raises
    ValueError when either card's front matter is broken, the generated card has no block, or either
    card has unmatched markers.
    """
    generated_header, generated_body = split(generated)
    existing_header, existing_body = split(existing)
    generated_block = block(generated_body)
    if generated_block is None:
        raise ValueError(f"the generated card has no {START} ... {END} block")
    return compose(_merge_header(existing_header, generated_header),
                   _merge_body(existing_body, generated_body, generated_block))


def _merge_header(existing: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in generated.items():
        if value is None:
            continue
        mine = existing.get(key)
        if key == "license" and value == PLACEHOLDER_LICENSE and mine is not None:
            value = mine
        elif key == "tags" and isinstance(value, list) and isinstance(mine, list):
            value = value + [tag for tag in mine if tag not in value]
        merged[key] = value
    for key, value in existing.items():
        merged.setdefault(key, value)
    return merged


def _merge_body(existing: str, generated: str, generated_block: str) -> str:
    span = _block_span(existing)
    if span is not None:
        return existing[:span[0]] + generated_block + existing[span[1]:]
    if not existing.strip():
        return generated
    return existing + ("" if existing.endswith("\n") else "\n") + "\n" + generated_block + "\n"


def _block_span(text: str) -> tuple[int, int] | None:
    starts, ends = text.count(START), text.count(END)
    if starts == ends == 0:
        return None
    start, end = text.find(START), text.find(END)
    if starts != 1 or ends != 1 or end < start:
        raise ValueError(
            f"the card's curate markers do not make one block ({starts} {START}, {ends} {END}, in that order): "
            "keep exactly one of each, start first, or remove both"
        )
    return start, end + len(END)
