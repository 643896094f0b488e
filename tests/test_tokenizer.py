"""Our tiktoken-based tokenizer against QwQ-32B's Hugging Face tokenizer.json, id for id."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from conftest_reference import require_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_corpus import ADDED, build_corpus

from qwq_agent.agent import tokenizer as tokmod
from qwq_agent.agent.chat_format import render
from qwq_agent.agent.markers import defuse
from qwq_agent.agent.messages import Message, ToolCall, ToolSpec
from qwq_agent.agent.tokenizer import QwenTokenizer, get_tokenizer

CORPUS = build_corpus(seed=0, size=3000)


@cache
def _reference(plain: bool) -> Any:
    """The reference tokenizer; `plain` drops its added tokens, so their text is ordinary text."""
    from tokenizers import Tokenizer

    spec = json.loads(require_reference("tokenizer.json").read_text(encoding="utf-8"))
    if plain:
        spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def reference() -> Any:
    return _reference(False)


@pytest.fixture(scope="module")
def plain_reference() -> Any:
    return _reference(True)


@pytest.fixture(scope="module")
def tok() -> QwenTokenizer:
    return get_tokenizer()


def _mismatches(tok: QwenTokenizer, ref: Any, texts: list[str], allow_special: bool) -> list[str]:
    refs = ref.encode_batch(texts, add_special_tokens=False)
    return [
        t for t, r in zip(texts, refs, strict=True) if tok.encode(t, allow_special=allow_special) != r.ids
    ]


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 3000
    assert any("<|im_start|>" in t for t in CORPUS) and any(
        "\u4e00" <= c <= "\u9fff" for t in CORPUS for c in t
    )
    assert sum(len(t) for t in CORPUS) > 500_000


def test_corpus_ids_match_reference(tok: QwenTokenizer, reference: Any) -> None:
    bad = _mismatches(tok, reference, CORPUS, allow_special=True)
    assert not bad, f"{len(bad)} of {len(CORPUS)} texts differ, e.g. {[t[:60] for t in bad[:3]]!r}"


def test_corpus_ids_match_reference_without_added_tokens(tok: QwenTokenizer, plain_reference: Any) -> None:
    bad = _mismatches(tok, plain_reference, CORPUS, allow_special=False)
    assert not bad, f"{len(bad)} of {len(CORPUS)} texts differ, e.g. {[t[:60] for t in bad[:3]]!r}"


def test_allow_special_false_never_emits_added_ids(tok: QwenTokenizer) -> None:
    text = "".join(ADDED)
    assert all(i < 151643 for i in tok.encode(text, allow_special=False))
    assert tok.encode(text) == sorted(tok.added_tokens.values(), key=lambda i: text.index(tok.decode([i])))


def test_added_token_before_combining_mark(tok: QwenTokenizer, reference: Any) -> None:
    # NFC over the whole string would fuse ">" + U+0338 into "≯" and lose <|im_end|>.
    text = "x<|im_end|>\u0338y e\u0301"
    assert tok.encode(text)[1] == tokmod.IM_END
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_rendered_prompt(tok: QwenTokenizer, reference: Any) -> None:
    call = ToolCall(name="python", arguments={"code": "print('你好')"})
    prompt = render(
        [
            Message(role="user", content="run it"),
            Message(role="assistant", reasoning="ok", tool_calls=[call]),
            Message(role="tool", content="你好"),
        ],
        [ToolSpec(name="python")],
    )
    ids = tok.encode(prompt)
    assert ids == reference.encode(prompt, add_special_tokens=False).ids
    assert ids[0] == tokmod.IM_START and ids[-2:] == [tokmod.THINK, 198]
    for token in (tokmod.TOOL_CALL, tokmod.TOOL_CALL_END, tokmod.TOOL_RESPONSE, tokmod.TOOL_RESPONSE_END):
        assert token in ids
    assert tok.count(prompt) == len(ids)


@settings(max_examples=1500, deadline=None)
@given(text=st.text(max_size=200))
def test_random_unicode_matches_reference(text: str) -> None:
    tok, ref = get_tokenizer(), _reference(False)
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids


_PIECES = st.sampled_from(
    [*ADDED, "\u0338", "e\u0301", "\n", "  ", "'s", "'LL", "12", "😀", "中", "\r\n", "\t"]
)


@settings(max_examples=800, deadline=None)
@given(text=st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=20).map("".join))
def test_added_tokens_in_text_match_reference(text: str) -> None:
    tok = get_tokenizer()
    assert tok.encode(text) == _reference(False).encode(text, add_special_tokens=False).ids
    assert (
        tok.encode(text, allow_special=False) == _reference(True).encode(text, add_special_tokens=False).ids
    )


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=100))
def test_decode_round_trip(text: str) -> None:
    tok = get_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == _reference(False).decode(ids, skip_special_tokens=False)
    assert tok.encode(tok.decode(ids)) == ids


def test_vocabulary_equals_reference_vocab_json(tok: QwenTokenizer) -> None:
    # vocab.json spells bytes with GPT-2's byte-to-unicode table; undo it and compare every entry.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    byte_of = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    vocab = json.loads(require_reference("vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 151643
    for text, token_id in vocab.items():
        assert tok.token_bytes(token_id) == bytes(byte_of[c] for c in text), token_id


def test_added_tokens_and_constants_match_reference(tok: QwenTokenizer) -> None:
    expected = {t["content"]: t["id"] for t in json.loads(require_reference("added_tokens.json").read_text())}
    assert tok.added_tokens == expected
    assert tok.vocab_size == 151669
    named = {
        "<|endoftext|>": tokmod.ENDOFTEXT, "<|im_start|>": tokmod.IM_START, "<|im_end|>": tokmod.IM_END,
        "<tool_call>": tokmod.TOOL_CALL, "</tool_call>": tokmod.TOOL_CALL_END,
        "<tool_response>": tokmod.TOOL_RESPONSE, "</tool_response>": tokmod.TOOL_RESPONSE_END,
        "<think>": tokmod.THINK, "</think>": tokmod.THINK_END,
    }  # fmt: skip
    for text, token_id in named.items():
        assert expected[text] == token_id
        assert tok.encode(text) == [token_id] and tok.decode([token_id]) == text
        assert tok.is_added(token_id)


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_missing_vocabulary_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tokmod.VocabularyNotFound, match="pip install dashscope"):
        tokmod.load_qwen_ranks()


_OUTPUTS = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(raw=_OUTPUTS.filter(lambda t: not t[:1].isspace()), reply=st.text(max_size=30))
def test_keep_reasoning_prompt_extends_token_prefix(raw: str, reply: str) -> None:
    """With keep_reasoning, turn N+1's ids begin with turn N's ids plus the output's ids and `<|im_end|>`.

    The output must not begin with whitespace, which would merge with the `\\n` ending the prompt. Its
    chat-template markers are written defused (chat_format's docstring): the text path never turns one
    into a control token (the ids path, `render_segments`, sends the ids the model generated).
    """
    tok = get_tokenizer()
    history = [Message(role="user", content="task")]
    turn = Message(role="assistant", content="", reasoning="", raw=raw)
    before = render(history, keep_reasoning=True)
    after = render([*history, turn, Message(role="tool", content=reply)], keep_reasoning=True)
    expected = [*tok.encode(before), *tok.encode(defuse(raw)), tokmod.IM_END]
    assert tok.encode(after)[: len(expected)] == expected
