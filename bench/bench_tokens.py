"""Token counting by the target model's chat template (``curate.tokens``) beside the tokenizer's own batch encode.

    .venv/bin/python bench/bench_tokens.py [--rows 20000] [--rounds 3] [--vocab 32000]

Nothing is downloaded. A byte-level BPE of ``--vocab`` tokens (32k: Llama 2's and Mistral's size)
is trained here with the ``tokenizers`` library on ~12 MB of synthetic text (the synthetic traffic's
own sentences, and words of random syllables drawn by a Zipf law, so that the merges run to the
full vocabulary), wrapped in ``PreTrainedTokenizerFast`` with a ChatML chat template that renders
tools, tool calls and reasoning as Qwen's does, and saved to a folder that ``curate.tokens.load``
reads. A store of ``--rows`` synthetic generations (``curate.synthetic``: multi-turn chats, tool
offers answered with tool calls, non-ASCII text) is read into a scratch table of typed messages,
as the export's first step does.

Each round then times, back to back on the same rows:

* ``count``: ``curate.tokens.count_rows`` over the scratch table, the export's counting step: the
  rows read from DuckDB in Arrow batches, each turned into the ``messages`` format's message dicts,
  rendered by the chat template (``apply_chat_template(tokenize=False)``, one call per batch and
  tools) and encoded in one batch (``tokenizer(texts, add_special_tokens=False)``);
* ``encode``: the tokenizer's own batch encode of the same rendered texts (rendered beforehand,
  untimed), in batches of the same size: the floor, what counting would cost if rendering and
  reading were free.

The ratio is count's rows/s over encode's, taken within each round (the machine is shared), and
its median over the rounds is printed; the goal is ≥ 0.8. Beside it, the same ratio in CPU time
(the process's, every thread): what counting costs beyond encoding when no core is idle. On two
cores a fast tokenizer's encode already uses both, so the render overlaps little and the two
ratios meet; with spare cores the render runs beside the encode. The counts of ``count`` are
checked equal to the encode's and, on a sample, to ``len(apply_chat_template(..., tokenize=True))``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}<|im_start|>{{ message.role }}
{{ message.content if message.content is string else '' }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content if message.content is string else '' }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]


def _corpus(megabytes: float) -> Iterator[str]:
    """Synthetic text: the traffic's sentences, and Zipf-drawn words made of random syllables."""
    from curate.synthetic import generation_record

    rng = random.Random(7)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiouy"] + ["str", "qu", "th", "sch", "ng", "é", "ü"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(60_000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    size, seed = 0, 0
    while size < megabytes * 2**20:
        record = generation_record(seed)
        seed += 1
        for message in (record.get("request") or {}).get("messages", []):
            text = str(message.get("content") or "")
            size += len(text)
            yield text
        line = " ".join(rng.choices(words, weights, k=200))
        size += len(line)
        yield line[:1].upper() + line[1:] + "."


def build_tokenizer(folder: Path, vocab: int) -> float:
    """Train the BPE and save it with the chat template into ``folder``; the seconds training took."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    started = time.perf_counter()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(12), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(folder))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32_000)
    args = parser.parse_args()

    import duckdb

    from curate import formats, tokens
    from curate.store import Store
    from curate.synthetic import generation_record

    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        work = Path(tmp)
        trained = build_tokenizer(work / "tokenizer", args.vocab)
        tokenizer = tokens.load(work / "tokenizer")
        backend = tokenizer.backend
        print(f"tokenizer: byte-level BPE, {len(backend):,} tokens, trained in {trained:.1f} s; "
              f"revision {tokenizer.revision}", flush=True)

        store = Store(work / "store.duckdb")
        store.ingest_texts([json.dumps(generation_record(seed), ensure_ascii=False) for seed in range(args.rows)],
                           source="bench")
        con = duckdb.connect(str(work / "scratch.duckdb"))
        with store.attached(con, "store"):
            con.execute("use store")
            con.execute(f"""create table scratch.main.rows as
                            select id, {formats.typed_messages("messages::varchar")} as t, tools::json as tools
                            from chat""")
            con.execute("use scratch")
        con.execute(f"delete from rows where ({formats.drop_reason('messages')}) is not null")
        n_rows = con.execute("select count(*) from rows").fetchall()[0][0]
        columns = formats.columns("messages")
        table = "(select rowid, * from rows)"

        # The floor's input: every row's text, rendered once beforehand as the counting renders it.
        texts, chats = [], []
        for batch in con.sql(f"select tools::varchar as tools, to_json(struct_pack(messages := {columns['messages']})) "
                             f"as row from rows order by rowid").to_arrow_reader(tokens.BATCH_ROWS):
            for tools, row in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                [conversation] = tokens.conversations("messages", json.loads(row))
                chats.append((conversation, None if tools is None else json.loads(tools)))
                texts.append(backend.apply_chat_template(conversation, tools=chats[-1][1], tokenize=False))
        print(f"rows: {n_rows:,} chat rows of {args.rows:,} generations; "
              f"{sum(map(len, texts)) / len(texts):,.0f} characters each once rendered", flush=True)

        def count() -> list[int]:
            counted = tokens.count_rows(con, table, "messages", columns, tokenizer)
            return counted.sort_by("key").column("tokens").to_pylist()

        def encode() -> list[int]:
            out: list[int] = []
            for start in range(0, len(texts), tokens.BATCH_ROWS):
                ids = backend(texts[start:start + tokens.BATCH_ROWS], add_special_tokens=False)["input_ids"]
                out += [len(x) for x in ids]
            return out

        counted = count()
        assert counted == encode(), "count and encode disagree"
        sample = random.Random(1).sample(range(len(texts)), min(200, len(texts)))
        for i in sample:
            conversation, offered = chats[i]
            assert counted[i] == len(backend.apply_chat_template(conversation, tools=offered, tokenize=True,
                                                                 return_dict=False))
        print(f"tokens per row: mean {statistics.mean(counted):,.0f}, max {max(counted):,}", flush=True)

        def cpu() -> float:
            used = resource.getrusage(resource.RUSAGE_SELF)
            return used.ru_utime + used.ru_stime

        ratios, cpu_ratios, rates = [], [], []
        for round_ in range(1, args.rounds + 1):
            timed, spent = {}, {}
            for name, run in (("encode", encode), ("count", count)):
                started, cpu_started = time.perf_counter(), cpu()
                run()
                timed[name], spent[name] = time.perf_counter() - started, cpu() - cpu_started
            ratios.append(timed["encode"] / timed["count"])
            cpu_ratios.append(spent["encode"] / spent["count"])
            rates.append(n_rows / timed["count"])
            print(f"round {round_}: count {n_rows / timed['count']:,.0f} rows/s, encode {n_rows / timed['encode']:,.0f} "
                  f"rows/s, count/encode {ratios[-1]:.2f}x (CPU time: {cpu_ratios[-1]:.2f}x)", flush=True)
        con.close()
    print(f"median of {args.rounds}: count {statistics.median(rates):,.0f} rows/s; count/encode "
          f"{statistics.median(ratios):.2f}x (goal >= 0.8x); in CPU time {statistics.median(cpu_ratios):.2f}x")


if __name__ == "__main__":
    main()
