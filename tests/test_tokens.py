"""Lengths by the target model's own tokenizer and chat template (curate.tokens, export --tokenizer/--max-tokens).

The tokenizer is made here: the ``tokenizers`` library trains a small byte-level BPE on the
synthetic traffic's text, ``PreTrainedTokenizerFast`` wraps it with a post-processor that would add
a BOS and a Jinja chat template that writes the BOS itself and renders tools, tool calls (arguments
as JSON), content parts and ``reasoning_content``; it is saved to a folder and loaded by path, so
nothing is downloaded. Every expected count is ``len(tokenizer.apply_chat_template(...,
tokenize=True))`` on the rows as a trainer loads them (``datasets.load_dataset``, or the JSON lines),
computed here apart from curate's counting.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import tokens
from curate.cli import app
from curate.errors import UsageError
from curate.exporter import ExportError, export
from curate.store import Store
from curate.synthetic import generation_record
from curate.tokens import TokenizerError, load, token_lengths

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n{% endif %}"
    "{%- if m.content is string %}{{ m.content }}"
    "{%- elif m.content_parts %}{% for p in m.content_parts %}"
    "{% if p.type == 'text' %}{{ p.text }}{% else %}<image>{% endif %}{% endfor %}{% endif %}"
    "{%- for c in m.tool_calls or [] %}\n<tool_call>{\"name\": {{ c.function.name | tojson }}, "
    "\"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}"
    "{%- if m.tool_call_id %} (for {{ m.tool_call_id }}){% endif %}<|im_end|>\n"
    "{% endfor %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


def _corpus() -> Iterator[str]:
    for seed in range(200):
        record = generation_record(seed, state="Success")
        for message in [*record["request"]["messages"], record["response"]["choices"][0]["message"]]:
            yield str(message.get("content") or "")
    yield json.dumps(WEATHER)


def _train(folder: Path, *, vocab: int = 600, template: str | None = TEMPLATE) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    # A post-processor that adds a BOS, as Llama's does: the template writes its own, and a count
    # that let the tokenizer add special tokens would count it twice.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", SPECIAL.index("<s>"))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    if template is not None:
        fast.chat_template = template
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture(scope="module")
def reference(tokenizer_dir: Path) -> Any:
    """The tokenizer as a trainer loads it, apart from curate.tokens."""
    return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _trainer_count(tok: Any, messages: list[dict[str, Any]], tools: Any = None) -> int:
    return len(tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False))


def _special_records() -> list[dict[str, Any]]:
    """Rows the synthetic traffic lacks: reasoning, content parts, a tool call with its result."""
    out = []
    thinking = generation_record(9001, state="Success")
    thinking["id"] = "special-reasoning"
    thinking["response"]["choices"][0]["message"] = {
        "role": "assistant", "content": "It is 4 °C.", "reasoning_content": "The user wants the weather; it is cold."}
    out.append(thinking)
    parts = generation_record(9002, state="Success")
    parts["id"] = "special-parts"
    parts["request"]["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
    parts["response"]["choices"][0]["message"] = {"role": "assistant", "content": "A cat on a mat."}
    out.append(parts)
    tool = generation_record(9003, state="Success")
    tool["id"] = "special-tool-result"
    tool["request"]["tools"] = WEATHER
    tool["request"]["messages"] = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'}]
    tool["response"]["choices"][0]["message"] = {"role": "assistant", "content": "4 °C in Zürich."}
    out.append(tool)
    return out


@pytest.fixture
def filled(store: Store) -> Store:
    records = [generation_record(seed) for seed in range(60)] + _special_records()
    store.ingest_texts([json.dumps(r, ensure_ascii=False) for r in records], source="fixture")
    return store


def _nearest_rank(sorted_values: list[int], q: float) -> int:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _stats(lengths: list[int]) -> list[int]:
    """rows, min, p50, p90, p99, max, total: what the card states, computed here."""
    xs = sorted(lengths)
    return [len(xs), xs[0], _nearest_rank(xs, 0.5), _nearest_rank(xs, 0.9), _nearest_rank(xs, 0.99), xs[-1], sum(xs)]


def _card_stats(card: str) -> dict[str, list[int]]:
    section = card.split("## Tokens by the target model's tokenizer", 1)[1].split("## Files", 1)[0]
    return {split: [int(v.replace(",", "")) for v in values.split(" | ")]
            for split, values in re.findall(r"^\| (train|test) \| (.+) \|$", section, re.MULTILINE)}


def _load(folder: Path) -> Any:
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / f"hf-cache-{folder.name}"))


def _arguments_parsed(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for m in messages:
        for call in m.get("tool_calls") or []:
            if isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return messages


def _jsonl(folder: Path, split: str) -> list[dict[str, Any]]:
    path = folder / "data" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected(tok: Any, fmt: str, folder: Path) -> dict[str, list[int]]:
    """Each split's row lengths, from the files as a trainer reads them, counted one by one."""
    out: dict[str, list[int]] = {}
    if fmt in ("openai", "catalyst", "openai-preference"):
        splits = {split: _jsonl(folder, split) for split in ("train", "test") if (folder / "data" / f"{split}.jsonl").exists()}
    else:
        splits = {split: list(rows) for split, rows in _load(folder).items()}
    for split, rows in splits.items():
        lengths = []
        for row in rows:
            if fmt == "messages":
                n = _trainer_count(tok, row["messages"], row["tools"])
            elif fmt in ("prompt-completion", "kto"):
                n = _trainer_count(tok, row["prompt"] + row["completion"], row["tools"])
            elif fmt == "dpo":
                n = max(_trainer_count(tok, row["prompt"] + row["chosen"], row["tools"]),
                        _trainer_count(tok, row["prompt"] + row["rejected"], row["tools"]))
            elif fmt == "openai":
                n = _trainer_count(tok, _arguments_parsed(row["messages"]), row.get("tools"))
            elif fmt == "openai-preference":
                given = row["input"]
                n = max(_trainer_count(tok, _arguments_parsed(given["messages"] + row[side]), given.get("tools"))
                        for side in ("preferred_output", "non_preferred_output"))
            elif fmt == "catalyst":
                request, answer = row["request"], row["response"]["choices"][0]["message"]
                n = _trainer_count(tok, _arguments_parsed(request["messages"] + [answer]), request.get("tools"))
            elif fmt == "sharegpt":
                roles = {"human": "user", "gpt": "assistant", "system": "system"}
                n = _trainer_count(tok, [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]])
            else:  # alpaca
                system = [{"role": "system", "content": row["system"]}] if row["system"] is not None else []
                user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
                n = _trainer_count(tok, [*system, {"role": "user", "content": user},
                                         {"role": "assistant", "content": row["output"]}])
            lengths.append(n)
        out[split] = lengths
    return out


# ---------------------------------------------------------------- counting as a trainer does


def test_a_batch_counts_what_apply_chat_template_tokenize_true_counts(tokenizer_dir: Path, reference: Any) -> None:
    loaded = load(tokenizer_dir)
    conversations = [
        [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How can I help?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Zürich?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
         {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 4}'},
         {"role": "assistant", "content": "4 °C."}],
        [{"role": "user", "content": "Why?"},
         {"role": "assistant", "content": "Because.", "reasoning_content": "The user asks why; say because."}],
        [{"role": "user", "content": ""}],
    ]
    for tools in (None, WEATHER):
        expected = [_trainer_count(reference, c, tools) for c in conversations]
        assert loaded.count(conversations, tools) == expected
    # The template writes the BOS once; the tokenizer's own post-processor would add another, which
    # a count with special tokens would include: the batch encodes without them, as the trainer's call does.
    text = reference.apply_chat_template(conversations[0], tokenize=False)
    assert text.startswith("<s>") and text.count("<s>") == 1
    assert len(reference(text)["input_ids"]) == _trainer_count(reference, conversations[0]) + 1
    # The template renders the reasoning and the tools: they count.
    plain = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]
    assert loaded.count([conversations[2]])[0] > loaded.count([plain])[0]
    assert loaded.count([plain], WEATHER)[0] > loaded.count([plain])[0]


def test_token_lengths_are_the_trainers_counts_of_the_exported_rows(filled: Store, tmp_path: Path,
                                                                    tokenizer_dir: Path, reference: Any) -> None:
    result = export(filled, "chat", tmp_path / "out", test_size=0, dedup="none", tokenizer=str(tokenizer_dir))
    rows = list(_load(tmp_path / "out")["train"])
    lineage = pq.read_table(tmp_path / "out" / "lineage.parquet").column("id").to_pylist()
    expected = {row_id: _trainer_count(reference, row["messages"], row["tools"]) for row_id, row in zip(lineage, rows,
                                                                                                        strict=True)}
    lengths = token_lengths(filled, "chat", tokenizer_dir)
    assert lengths.column_names == ["id", "tokens", "refused"]
    assert dict(zip(lengths.column("id").to_pylist(), lengths.column("tokens").to_pylist(), strict=True)) == expected
    assert _card_stats(result.card) == {"train": _stats(list(expected.values()))}
    # The rows the synthetic traffic lacks were among them, and counted with what they hold.
    by_id = dict(zip(lineage, rows, strict=True))
    assert by_id["special-reasoning"]["messages"][-1]["reasoning_content"] == "The user wants the weather; it is cold."
    assert by_id["special-parts"]["messages"][0]["content_parts"] is not None
    assert by_id["special-tool-result"]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Zürich"}
    # --where, an already loaded tokenizer, and the package's facade.
    import curate

    some = curate.token_lengths(filled, "chat", reference, where="id like 'special-%'")
    assert sorted(some.column("id").to_pylist()) == ["special-parts", "special-reasoning", "special-tool-result"]
    assert all(expected[i] == n for i, n in zip(some.column("id").to_pylist(), some.column("tokens").to_pylist(),
                                                 strict=True))


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion", "openai", "catalyst", "sharegpt", "alpaca"])
def test_the_cards_statistics_are_the_trainers_counts(filled: Store, tmp_path: Path, tokenizer_dir: Path,
                                                      reference: Any, fmt: str) -> None:
    result = export(filled, "chat", tmp_path / fmt, fmt=fmt, test_size=0.3, tokenizer=str(tokenizer_dir))
    expected = _expected(reference, fmt, tmp_path / fmt)
    assert set(expected) == {"train", "test"}
    assert _card_stats(result.card) == {split: _stats(lengths) for split, lengths in expected.items()}
    assert f"Counted with `{tokenizer_dir}` (revision `{load(tokenizer_dir).revision}`)" in result.card
    assert "No row was dropped for its length (no `--max-tokens`)." in result.card


def test_reasoning_is_counted_as_the_writer_writes_it(filled: Store, tmp_path: Path, tokenizer_dir: Path,
                                                      reference: Any) -> None:
    # inline: the reasoning is in the content, between think tags; counted as written.
    result = export(filled, "chat", tmp_path / "inline", test_size=0, reasoning="inline", tokenizer=str(tokenizer_dir))
    expected = _expected(reference, "messages", tmp_path / "inline")
    assert _card_stats(result.card) == {"train": _stats(expected["train"])}
    answers = [row["messages"][-1]["content"] for row in _load(tmp_path / "inline")["train"]]
    assert any(a.startswith("<think>\nThe user wants the weather") for a in answers if a)


def test_max_tokens_drops_exactly_the_rows_over_and_counts_them(filled: Store, tmp_path: Path, tokenizer_dir: Path,
                                                                reference: Any) -> None:
    lengths = token_lengths(filled, "chat", tokenizer_dir)
    counts = dict(zip(lengths.column("id").to_pylist(), lengths.column("tokens").to_pylist(), strict=True))
    limit = sorted(counts.values())[len(counts) // 2]
    over = {i for i, n in counts.items() if n > limit}
    assert 0 < len(over) < len(counts)
    result = export(filled, "chat", tmp_path / "out", test_size=0.3, dedup="none", tokenizer=str(tokenizer_dir),
                    max_tokens=limit)
    exported = set(pq.read_table(tmp_path / "out" / "lineage.parquet").column("id").to_pylist())
    assert exported == set(counts) - over
    reason = f"over {limit} tokens"
    assert result.invalid[reason] == len(over)
    assert set(result.invalid_examples[reason]) <= over
    assert result.counts[f"at most {limit} tokens"] == len(counts) - len(over)
    assert sum(result.splits.values()) == len(exported) == result.counts["train"] + result.counts["test"]
    assert f"were dropped, not truncated: **{len(over)}**" in result.card
    assert f"| {reason} |" not in result.card  # stated with the lengths, not as invalid for the format
    expected = _expected(reference, "messages", tmp_path / "out")
    assert max(max(v) for v in expected.values()) <= limit
    assert _card_stats(result.card) == {split: _stats(v) for split, v in expected.items()}
    # Nothing truncated: each row written is whole, its length the one counted before.
    assert sorted(n for v in expected.values() for n in v) == sorted(counts[i] for i in exported)


def test_max_tokens_under_every_row_exports_nothing_and_says_why(filled: Store, tmp_path: Path,
                                                                 tokenizer_dir: Path) -> None:
    with pytest.raises(ExportError, match=r"nothing to export: all \d+ rows are over --max-tokens 5"):
        export(filled, "chat", tmp_path / "out", tokenizer=str(tokenizer_dir), max_tokens=5)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- preference pairs


def _pair_records() -> list[dict[str, Any]]:
    out = []
    for i in range(14):
        prompt = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": f"Question {i}: why?"}]
        for j, words in enumerate((3, 12 + 9 * i, 40 - 2 * i)):
            record = generation_record(5000 + 3 * i + j, state="Success")
            record["id"] = f"q{i:02d}-{j}"
            record["request"]["messages"] = prompt
            record["request"].pop("tools", None)
            if i % 4 == 1:
                record["request"]["tools"] = WEATHER
            record["response"]["choices"][0]["message"] = {
                "role": "assistant", "content": " ".join(["because the weather is fine"] * words)}
            record["finishedAt"] = (_EPOCH + timedelta(seconds=10 * i + j)).isoformat().replace("+00:00", "Z")
            out.append(record)
    return out


# The rank: for even prompts the second (long) answer is chosen and the first (short) rejected, for
# odd ones the other way round: a pair's longer side is the chosen one for some, the rejected for others.
_RANKED = ("select c.*, (case when cast(substr(id, 2, 2) as int) % 2 = 0 then "
           "case right(id, 1) when '1' then 9 when '2' then 5 else 1 end "
           "else case right(id, 1) when '0' then 9 when '2' then 5 else 1 end end)::double as judge_helpfulness "
           "from chat c")


@pytest.mark.parametrize("fmt", ["dpo", "kto", "openai-preference"])
def test_a_pair_counts_its_longer_side(store: Store, tmp_path: Path, tokenizer_dir: Path, reference: Any,
                                       fmt: str) -> None:
    store.ingest_texts([json.dumps(r) for r in _pair_records()], source="fixture")
    result = export(store, _RANKED, tmp_path / fmt, fmt=fmt, test_size=0.3, tokenizer=str(tokenizer_dir))
    expected = _expected(reference, fmt, tmp_path / fmt)
    assert _card_stats(result.card) == {split: _stats(v) for split, v in expected.items()}
    every = sorted(n for v in expected.values() for n in v)
    limit = every[len(every) // 2]
    limited = export(store, _RANKED, tmp_path / f"{fmt}-limited", fmt=fmt, test_size=0.3,
                     tokenizer=str(tokenizer_dir), max_tokens=limit)
    kept = _expected(reference, fmt, tmp_path / f"{fmt}-limited")
    if fmt == "kto":  # a side over the limit takes its pair's other side with it: every pair kept is whole
        lineage = pq.read_table(tmp_path / f"{fmt}-limited" / "lineage.parquet").to_pylist()
        sides = Counter((r["chosen_id"], r["rejected_id"]) for r in lineage)
        assert sides and set(sides.values()) == {2}
        assert all(n <= limit for v in kept.values() for n in v)
        assert limited.invalid[f"over {limit} tokens"] == len(every) - 2 * len(sides)
    else:
        assert sorted(n for v in kept.values() for n in v) == [n for n in every if n <= limit]
        assert limited.invalid[f"over {limit} tokens"] == sum(n > limit for n in every)
    assert _card_stats(limited.card) == {split: _stats(v) for split, v in kept.items()}
    if fmt != "kto":  # a pair's two answers' models, of the pairs kept
        models = limited.card.split("Models of the answers in the pairs kept:", 1)[1].split("\n## ", 1)[0]
        chosen = sum(int(n.replace(",", "")) for n in re.findall(r"^\| [^|]+ \| ([\d,]+) \|", models, re.MULTILINE))
        assert chosen == sum(len(v) for v in kept.values())


# ---------------------------------------------------------------- unchanged without --tokenizer


def _data(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted([*folder.glob("data/*"),
                                                                               folder / "lineage.parquet"])}


def _without_lengths(card: str) -> str:
    card = re.sub(r"Exported [^\n]* UTC by", "Exported WHEN by", card)
    return re.sub(r"\n## Tokens by the target model's tokenizer\n.*?(?=\n## Files)", "", card, flags=re.DOTALL)


def test_counting_alone_changes_no_file_and_adds_only_the_cards_section(filled: Store, tmp_path: Path,
                                                                        tokenizer_dir: Path) -> None:
    plain = export(filled, "chat", tmp_path / "plain" / "out", test_size=0.3)
    counted = export(filled, "chat", tmp_path / "counted" / "out", test_size=0.3, tokenizer=str(tokenizer_dir))
    assert _data(tmp_path / "plain" / "out") == _data(tmp_path / "counted" / "out")
    assert "Tokens by the target model" not in plain.card
    assert _without_lengths(counted.card) == _without_lengths(plain.card)
    assert counted.counts == plain.counts and counted.invalid == plain.invalid


def test_an_export_without_tokenizer_does_not_import_transformers(filled: Store, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        f"sys.argv = ['curate', 'export', 'chat', '--db', {str(filled.path)!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--json']\n"
        "from curate.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps([m for m in ('transformers', 'tokenizers', 'jinja2', 'curate.tokens') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []
    # Importing curate.tokens itself loads none of them either: only load() does.
    code = ("import sys, json, curate.tokens; "
            "print(json.dumps([m for m in ('transformers', 'tokenizers', 'jinja2') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


# ---------------------------------------------------------------- loading, and what it records


def test_a_folders_revision_is_a_digest_of_its_tokenizer_files(tokenizer_dir: Path, tmp_path: Path) -> None:
    first = load(tokenizer_dir)
    assert first.name == str(tokenizer_dir) and re.fullmatch(r"sha256:[0-9a-f]{16}", first.revision)
    assert load(tokenizer_dir).revision == first.revision
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tokenizer_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "model.safetensors").write_bytes(b"weights are not the tokenizer")
    assert load(copy).revision == first.revision
    template = next(copy.glob("chat_template*"))
    template.write_text(template.read_text() + "\n", encoding="utf-8")
    assert load(copy).revision != first.revision


def test_a_hub_id_loads_from_the_cache_offline_and_records_its_commit(tokenizer_dir: Path, tmp_path: Path) -> None:
    # A Hugging Face cache laid out as a download leaves it, read with HF_HUB_OFFLINE=1: nothing is fetched.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-chat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in tokenizer_dir.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    # The repo has no config.json; a download records that, and AutoTokenizer asks for it.
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "config.json").touch()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")}
    code = ("import json; from curate.tokens import load; t = load('tiny-org/tiny-chat'); "
            "print(json.dumps([t.name, t.revision, t.count([[{'role': 'user', 'content': 'hi'}]])]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    name, revision, counted = json.loads(done.stdout.splitlines()[-1])
    assert (name, revision) == ("tiny-org/tiny-chat", commit)
    assert counted == [_trainer_count(transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                                      [{"role": "user", "content": "hi"}])]
    # An id the cache does not hold: the message says only the cache was read, and what to do.
    code = "from curate.tokens import load; load('tiny-org/not-there')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode != 0
    assert "HF_HUB_OFFLINE is set" in done.stderr and "hf download tiny-org/not-there" in done.stderr


def test_what_is_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no such folder"):
        load(str(tmp_path / "nowhere" / "tok"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="the folder has no tokenizer files"):
        load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="is a file"):
        load(tmp_path / "file")
    bare = _train(tmp_path / "bare", vocab=300, template=None)
    with pytest.raises(TokenizerError, match="has no chat template"):
        load(bare)
    assert issubclass(TokenizerError, UsageError)  # the command line prints it as one line, and exits with 2


def test_without_transformers_the_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(TokenizerError, match=re.escape(tokens.EXTRA)):
        load(tmp_path)


# ---------------------------------------------------------------- the command line


def test_the_command_line_counts_and_drops(filled: Store, tmp_path: Path, tokenizer_dir: Path) -> None:
    lengths = token_lengths(filled, "chat", tokenizer_dir).column("tokens").to_pylist()
    limit = sorted(lengths)[len(lengths) // 3]
    result = CliRunner().invoke(app, ["export", "chat", "--db", str(filled.path), "--out", str(tmp_path / "out"),
                                      "--dedup", "none", "--tokenizer", str(tokenizer_dir), "--max-tokens", str(limit),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["invalid"] == {f"over {limit} tokens": sum(n > limit for n in lengths)}
    assert summary["counts"][f"at most {limit} tokens"] == sum(n <= limit for n in lengths)
    refused = CliRunner().invoke(app, ["export", "chat", "--db", str(filled.path), "--out", str(tmp_path / "x"),
                                       "--max-tokens", "10"])
    assert refused.exit_code == 2 and "--max-tokens 10 needs --tokenizer" in refused.output
    missing = CliRunner().invoke(app, ["export", "chat", "--db", str(filled.path), "--out", str(tmp_path / "y"),
                                       "--tokenizer", str(tmp_path / "nowhere") + "/tok"])
    assert missing.exit_code == 2 and "no such folder" in missing.output



def test_a_row_the_chat_template_refuses_is_dropped_and_counted_not_a_crash(filled: Store, tmp_path: Path) -> None:
    # Mistral's and Gemma's templates raise on roles they do not take; here: tool messages.
    refusing = TEMPLATE.replace("{%- for m in messages %}", "{%- for m in messages %}{% if m.role == 'tool' %}"
                                "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}")
    folder = _train(tmp_path / "refusing", template=refusing)
    result = export(filled, "chat", tmp_path / "out", test_size=0, dedup="none", tokenizer=str(folder))
    reason = "the chat template refuses it: Conversation roles must alternate user/assistant"
    assert result.invalid[reason] == 1 and result.invalid_examples[reason] == ["special-tool-result"]
    assert "special-tool-result" not in pq.read_table(tmp_path / "out" / "lineage.parquet").column("id").to_pylist()
    lengths = {r["id"]: r for r in token_lengths(filled, "chat", folder).to_pylist()}
    assert lengths["special-tool-result"]["tokens"] is None
    assert lengths["special-tool-result"]["refused"].startswith("Conversation roles must alternate")
