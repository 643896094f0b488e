"""A deterministic, varied corpus for tokenizer comparisons (tests/test_tokenizer.py, benchmarks/).

Kinds: Python source (the standard library's own files, cut into chunks), prose in several scripts, CJK,
emoji (ZWJ sequences, skin tones, flags), whitespace runs of every kind, text with QwQ's added tokens and
near-misses of them, NFC-sensitive sequences, numbers, rendered chat prompts and random code points.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

from qwq_agent.agent.chat_format import render
from qwq_agent.agent.messages import Message, ToolCall, ToolSpec
from qwq_agent.agent.tokenizer import load_added_tokens

ADDED = sorted(load_added_tokens())
NEAR_MISSES = [
    "<|im_st",
    "<|im_end|",
    "<think",
    "</think >",
    "< tool_call>",
    "<|endoftext|",
    "<|",
    "|>",
    "</",
]

PROSE = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see what they've done, I'd say.",
    "IT'S LOUD AND THEY'RE HERE. She'S fine, HE'LL come, we'VE gone, I'M done, you'D know.",
    "Ça va? Naïve façade, coöperate — Übermäßig große Straße in Zürich; ¿Dónde está el niño?",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Τάχιστη αλώπηξ βαφής ψημένη γη, δρασκελίζει υπέρ νωθρού κυνός.",
    "سلام دنیا! هذا نص عربي مع أرقام ١٢٣٤٥ و 67890.",
    "שלום עולם, זהו טקסט בעברית.",
    "नमस्ते दुनिया, यह हिंदी में एक वाक्य है।",
    "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
    "我们来计算一下：2的10次方等于1024。人工智能正在改变世界，大语言模型可以写代码。",
    "日本語のテキスト：東京は日本の首都です。ひらがなとカタカナ、漢字が混ざっています。",
    "한국어 문장입니다. 서울은 대한민국의 수도입니다.",
    "Tiếng Việt có dấu: Hà Nội, Thành phố Hồ Chí Minh.",
    "Math: ∀x∈ℝ, x²≥0; ∑_{i=1}^{n} i = n(n+1)/2 ≈ 0.5n²; π≈3.14159; √2; ∞ ≠ −∞.",
    "Prices: $1,234.56 — €99,99 — ¥10000 — £7.5 — 12% — 3.0e-10 — 0x1F — 1_000_000.",
    "URLs: https://example.com/path?q=1&x=%20y#frag and mail: a.b+c@example.org.",
]
EMOJI = [
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "❤️", "🧑🏿‍💻", "✅", "🔥", "🐍", "🤔", "👋🏻", "🫠", "©️", "1️⃣",
]  # fmt: skip
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085",
              "\x0b", "\x0c", "\u200b", "\u2009", "\u202f", "\ufeff", "    ", "\t\t"]  # fmt: skip
NFC_SENSITIVE = ["e\u0301", "A\u030a", "\u212b", "\u1100\u1161\u11a8", "o\u0308\u0304", "\u0041\u0328\u0301",
                 ">\u0338", "<\u0338", "\u2126", "ﬁ", "ｆｕｌｌ", "\u0958", "\u00e9", "n\u0303"]  # fmt: skip


def _code_chunks(limit: int, rng: random.Random) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 2000)[:120]
    chunks: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for _ in range(3):
            start = rng.randrange(0, max(1, len(text) - 200))
            chunks.append(text[start : start + rng.choice([80, 400, 1500, 4000])])
    rng.shuffle(chunks)
    return chunks[:limit]


def _random_codepoints(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2100, 0x22FF),
              (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
              (0x10000, 0x1007F), (0x20000, 0x2A6DF), (0x0, 0x1F)]  # fmt: skip
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _mixed(rng: random.Random) -> str:
    pools = [
        PROSE,
        EMOJI,
        WHITESPACE,
        NFC_SENSITIVE,
        ADDED,
        NEAR_MISSES,
        ["'s", "'LL", "’s", "'", "123", "4567890"],
    ]
    pieces = []
    for _ in range(rng.randint(1, 25)):
        pool = rng.choice(pools)
        piece = rng.choice(pool)
        if pool is PROSE and rng.random() < 0.5:
            words = piece.split(" ")
            piece = " ".join(words[: rng.randint(1, len(words))])
        pieces.append(piece)
    return rng.choice(["", " ", "\n"]).join(pieces)


def _prompts(rng: random.Random, n: int) -> list[str]:
    tools = [
        ToolSpec(name="python", description="Run code — «sandbox» 🐍", parameters={
            "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}),
        ToolSpec(name="search", description="Web search: 搜索"),
    ]  # fmt: skip
    prompts = []
    for _ in range(n):
        messages = [Message(role="system", content=rng.choice(PROSE))] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages.append(Message(role="user", content=_mixed(rng)))
            call = ToolCall(name="python", arguments={"code": rng.choice(PROSE), "n": rng.randint(0, 10**6)})
            messages.append(
                Message(role="assistant", content=_mixed(rng), reasoning=rng.choice(PROSE), tool_calls=[call])
            )
            messages.append(Message(role="tool", content=_mixed(rng)))
        prompts.append(
            render(messages, tools if rng.random() < 0.7 else (), keep_reasoning=rng.random() < 0.5)
        )
    return prompts


def build_corpus(seed: int = 0, size: int = 3000) -> list[str]:
    """`size` texts (at least), the same ones for the same seed and Python version."""
    rng = random.Random(seed)
    share = size // 10
    corpus: list[str] = []
    corpus += _code_chunks(2 * share, rng)
    corpus += list(PROSE) + EMOJI + WHITESPACE + NFC_SENSITIVE + ADDED + NEAR_MISSES
    corpus += [
        "".join(rng.choice([*WHITESPACE, "a", "1", "."]) for _ in range(rng.randint(1, 60)))
        for _ in range(share)
    ]
    corpus += [
        "".join(rng.choice([*EMOJI, " ", "x"]) for _ in range(rng.randint(1, 20))) for _ in range(share // 2)
    ]
    corpus += [_mixed(rng) for _ in range(3 * share)]
    corpus += [_random_codepoints(rng, rng.randint(1, 80)) for _ in range(2 * share)]
    corpus += _prompts(rng, share // 2)
    # added tokens glued to NFC-sensitive neighbours, where normalising before splitting would go wrong
    corpus += [f"{a}{b}{c}" for a in ADDED[:6] for b in NFC_SENSITIVE for c in ("", "\u0338", "x")]
    while len(corpus) < size:
        corpus.append(_mixed(rng))
    return corpus
