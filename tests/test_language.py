"""Language detection and the answer/user language mismatch check."""

from __future__ import annotations

import pytest

from qwq_agent.agent.language import (
    LanguageConfig,
    correction_prompt,
    detect_language,
    language_mismatch,
    strip_non_language,
)

EN_Q = "How can I read a large CSV file in Python without loading all of it into memory at once?"
ZH_Q = "如何在 Python 中读取一个很大的 CSV 文件，而不把它全部加载到内存中？"
FR_Q = "Comment est-ce que je peux lire un gros fichier CSV en Python sans le charger entièrement en mémoire ?"

EN_ANSWER = (
    "You can read the file lazily with the csv module. Open the file, wrap it in a reader and iterate "
    "over the rows: each row is produced only when you ask for it, so the memory use stays flat. If you "
    "need aggregates, keep running totals instead of storing the rows in a list."
)

ZH_ANSWER_WITH_CODE = """可以使用 Python 标准库中的 `csv` 模块逐行读取文件，这样内存占用始终很小。

```python
import csv

def iter_rows(path: str):
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield row
```

这里 `iter_rows` 是一个生成器函数，每次只返回一行数据。如果需要分块处理，也可以使用 pandas 的
`read_csv(path, chunksize=10000)`，它会返回一个迭代器，每次得到一个 DataFrame。
处理完每一块之后再读取下一块，就不会把整个 CSV 文件一次性加载到内存里。"""


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        (EN_ANSWER, "en"),
        (ZH_Q, "zh"),
        (FR_Q, "fr"),
        ("Wie kann ich eine große Datei in Python lesen, ohne dass der Speicher voll wird? Ich habe es mit "
         "einer Schleife versucht, aber es ist immer noch zu langsam.", "de"),
        ("¿Cómo puedo leer un archivo grande en Python sin cargarlo todo en la memoria? Lo intenté con un "
         "bucle pero es muy lento y no sé por qué.", "es"),
        ("Come posso leggere un file molto grande in Python senza caricarlo tutto nella memoria? Ho provato "
         "con un ciclo ma è ancora molto lento.", "it"),
        ("Como posso ler um arquivo grande em Python sem carregar tudo na memória? Eu tentei com um laço "
         "mas não funciona e é muito lento.", "pt"),
        ("Hoe kan ik een groot bestand in Python lezen zonder het helemaal in het geheugen te laden? Ik heb "
         "het met een lus geprobeerd maar het is nog steeds te traag.", "nl"),
        ("Как прочитать большой файл в Python, не загружая его целиком в память?", "ru"),
        ("Pythonで大きなファイルをメモリに全部読み込まずに読むにはどうすればいいですか？", "ja"),
        ("파이썬에서 큰 파일을 메모리에 한꺼번에 올리지 않고 읽으려면 어떻게 해야 하나요?", "ko"),
        ("كيف يمكنني قراءة ملف كبير في بايثون دون تحميله بالكامل في الذاكرة؟", "ar"),
        ("मैं पायथन में एक बड़ी फ़ाइल को पूरी तरह मेमोरी में लोड किए बिना कैसे पढ़ूँ?", "hi"),
        ("Πώς μπορώ να διαβάσω ένα μεγάλο αρχείο στην Python χωρίς να το φορτώσω όλο στη μνήμη;", "el"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    guess = detect_language(text)
    assert guess.lang == lang
    assert guess.confidence >= 0.5


def test_scripts_are_reported_as_shares() -> None:
    guess = detect_language(ZH_Q)
    assert set(guess.scripts) == {"Han", "Latin"}
    assert guess.scripts["Han"] > guess.scripts["Latin"]
    assert sum(guess.scripts.values()) == pytest.approx(1.0)


def test_code_urls_numbers_and_math_are_ignored() -> None:
    stripped = strip_non_language(
        "见 https://example.com/docs/path?q=1 和 `os.path.join`：\n```\nfor i in range(10): pass\n```\n"
        "公式 $x^2 + y^2 = 1$ 以及 \\(a+b\\)，数字 123456。调用 read_csv 和 DataFrame.head 即可。"
    )
    for gone in ("https", "example", "os.path", "range", "x^2", "a+b", "123456", "read_csv", "DataFrame"):
        assert gone not in stripped
    assert "公式" in stripped and "数字" in stripped


def test_numbers_only_is_undetermined() -> None:
    assert detect_language("42").lang == "und"
    assert detect_language("3.14159 * 2 = 6.28318").lang == "und"


# ---- mismatch ----------------------------------------------------------------------------------


def test_english_answer_drifting_into_chinese_is_flagged() -> None:
    answer = EN_ANSWER + (
        " 另外，如果文件非常大，可以考虑使用分块读取的方法，每次只处理一部分数据，然后把结果合并起来。"
        "这样可以避免内存不足的问题，同时也能提高处理速度。"
    )
    mismatch = language_mismatch(EN_Q, answer)
    assert mismatch is not None
    assert mismatch.user_lang == "en" and mismatch.answer_lang == "zh"
    assert mismatch.foreign_share >= LanguageConfig().foreign_script_threshold
    assert "Han" in mismatch.reason


def test_chinese_answer_with_english_code_and_identifiers_is_not_flagged() -> None:
    assert language_mismatch(ZH_Q, ZH_ANSWER_WITH_CODE) is None


def test_chinese_question_with_english_prose_answer_is_flagged() -> None:
    mismatch = language_mismatch(ZH_Q, EN_ANSWER)
    assert mismatch is not None and mismatch.user_lang == "zh"


def test_french_question_english_answer_is_flagged() -> None:
    mismatch = language_mismatch(FR_Q, EN_ANSWER)
    assert mismatch is not None
    assert (mismatch.user_lang, mismatch.answer_lang) == ("fr", "en")


def test_french_question_french_answer_is_not_flagged() -> None:
    answer = (
        "Vous pouvez lire le fichier ligne par ligne avec le module csv. Chaque ligne est produite "
        "seulement quand vous la demandez, donc la mémoire reste stable pendant tout le traitement."
    )
    assert language_mismatch(FR_Q, answer) is None


def test_english_answer_full_of_code_is_not_flagged() -> None:
    answer = """Use a generator:

```python
import csv
# 逐行读取，避免一次性加载  (comments in other languages inside code do not count)
def rows(path):
    with open(path) as f:
        yield from csv.reader(f)
```

Then call `rows("data.csv")` in a loop; see https://docs.python.org/3/library/csv.html for the details."""
    assert language_mismatch(EN_Q, answer) is None


@pytest.mark.parametrize("answer", ["42", "3.14159", "x = 7", "$$\\frac{1}{2}$$", "1, 2, 3, 5, 8, 13"])
def test_short_answers_are_not_flagged(answer: str) -> None:
    assert language_mismatch(EN_Q, answer) is None
    assert language_mismatch(ZH_Q, answer) is None


def test_same_language_is_not_flagged() -> None:
    assert language_mismatch(EN_Q, EN_ANSWER) is None


def test_undetermined_user_language_is_not_judged() -> None:
    assert language_mismatch("2 + 2 = ?", "这是四。答案是四，因为二加二等于四。") is None


def test_threshold_is_configuration() -> None:
    answer = EN_ANSWER + " 总之，这样做就可以了。"
    assert language_mismatch(EN_Q, answer) is None
    assert language_mismatch(EN_Q, answer, LanguageConfig(foreign_script_threshold=0.05)) is not None


# ---- correction --------------------------------------------------------------------------------


def test_correction_prompt_in_english_and_the_users_language() -> None:
    assert correction_prompt("zh") == "Please answer in Chinese. 请用中文回答。"
    assert correction_prompt("en") == "Please answer in English."
    assert correction_prompt("fr").startswith("Please answer in French.")
    assert "français" in correction_prompt("fr")
    assert "same language" in correction_prompt("und")
