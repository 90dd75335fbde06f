-- One row per chat row scored by `curate score`: heuristic signals of its answer, computed without any API.
--
-- Reads the `signal_rows` table that `curate score` fills (each run measures only the chat rows
-- new or changed since, or scored by an older signals version; `--full` all of them). A row is
-- listed while its generation is stored with the body that was scored: a changed generation
-- drops out until the next `curate score`. Rows not scored yet are not listed; `chat` left join
-- `signals` using (id) keeps them. Rows come in no particular order.
--
-- The answer is the last message of chat.messages (the model's), its text curate.messages'
-- one rule (the content string, or its text parts joined by a newline; tool calls are not text).
-- Words: maximal runs of letters, digits and underscores, each Chinese or Japanese character a
-- word of its own (curate.signals.words). Definitions in curate/signals.py's docstring, version 1:
--
-- refusal: the answer starts (after leading whitespace, quotes and markup, and up to two apology
-- lead-ins such as "I'm sorry, but", "Leider", "Lo siento, pero") with a phrase of
-- curate.signals.REFUSAL_PHRASES (REFUSAL_LEADS for the lead-ins): English, French, German,
-- Spanish, Italian, Portuguese. Case-insensitive, on the first 300 characters; curly apostrophes
-- read as straight; English "can't"/"i'm"/"won't" also match "cannot"/"can not", "i am", "will
-- not" (and "don't", "isn't", "that's" their long forms). Phrases that open helpful answers ("I can't stress enough", "I can't help but") are not
-- listed, and a refusal after the answer's start is not found.
-- repetition: 1 - distinct / total over the answer's word 4-grams, lower-cased (rep-4); 0 below 4 words.
-- language: py3langid 0.4 (its model ships in its wheel), over the answer's first 2,000
-- characters (curate.signals.LANGUAGE_CHARS); NULL when the answer is empty or short.
--
-- id              varchar      the generation id (a row of chat)
-- refusal         boolean      the answer starts with a listed refusal phrase
-- refusal_phrase  varchar      that phrase as listed in curate.signals.REFUSAL_PHRASES; NULL when refusal is false
-- repetition      double       share of the answer's word 4-grams that repeat an earlier one, 0 to 1
-- truncated       boolean      finish_reason = 'length': the model hit its token limit
-- empty           boolean      the answer's text is empty or whitespace only (an answer of tool calls alone)
-- short           boolean      not empty, and fewer than 5 words
-- language        varchar      ISO 639-1 code of the answer's language (en, fr, de...); NULL when empty or short
-- language_score  double       py3langid's probability of that language, 0 to 1; NULL with language
-- answer_chars    bigint       the answer's text length in characters (code points)
-- answer_words    bigint       the answer's words
-- version         integer      curate.signals.SIGNALS_VERSION the row was scored with
-- scored_at       timestamptz  when `curate score` measured it

select s.id, s.refusal, s.refusal_phrase, s.repetition, s.truncated, s.empty, s.short, s.language,
       s.language_score, s.answer_chars, s.answer_words, s.version, s.scored_at
from signal_rows s
join generation_rows g on g.id = s.id and g.raw_hash = s.raw_hash
