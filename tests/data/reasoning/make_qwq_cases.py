"""Writes the QwQ-style cases next to this file: `python tests/data/reasoning/make_qwq_cases.py`.

Written from the description of real QwQ-32B circling (issue 12), not copied from any output:
- qwq_parentheses_loop: an arithmetic puzzle where the model recomputes the same three candidate
  expressions again and again, each time with the same wrong values, in varied wording, never answering;
- qwq_zh_loop: the same kind of loop in Chinese, with Chinese revisit markers (等等, 再算一遍, 之前);
- qwq_options_loop: cycling through the same answer options with "we tried that earlier";
- healthy_enumeration: a long enumeration whose labels and numbers all differ (must not be flagged);
- healthy_verify_once: an enumeration followed by one verification pass over every case, then the
  answer (each step is revisited once: must not be flagged).
Added for issue 12's earliness work (cases outside the corpus, written before looking at the outcome):
- qwq_rederive_loop: real progress first, then the model re-derives the same three quantities of a
  rate problem with the same values, announcing each return ("wait", "again"), never answering;
- healthy_many_waits: long distinct work that says "wait" and "let me check" often but never goes
  over the same step twice, then answers (markers alone must not flag);
- healthy_options_weighed: a multiple-choice question whose options are each weighed with "wait",
  one of them reconsidered once, then answered (must not be flagged).
Added for the probe/earliness work (written before running the detector on them):
- qwq_24_loop: the "make 24 from 3, 3, 8, 8" puzzle; the model keeps recomputing the same four wrong
  expressions (same values each time), with a few fresh ideas in between and fewer revisit markers
  than the parentheses case, never answering;
- healthy_reconfirm: a long amortisation table (all numbers new), then the answer stated, re-checked
  once by the closed formula, and re-confirmed twice with "wait" / "let me double-check" (the
  re-confirmation pattern healthy corpus traces show more often than loops): must not be flagged.
Added for the copy signals (written before running the detector on them):
- qwq_recopy_loop: a geometry problem where, after some real work, the model writes out the same three
  paragraphs again and again, each time behind a different opener ("Wait,", "Alternatively,", "Hmm,")
  and with a short new remark in between, never answering (near-verbatim cycling);
- healthy_restate: a long forward derivation that re-reads the problem once, word for word, re-states
  its key equation paragraph word for word in the summary, and says "wait" a few times while fixing
  slips: two long copies and some markers, must not be flagged.
Added with the byte-weighed lengths (Chinese text is ~3 bytes a character; written before running the
detector on it):
- healthy_zh_verify: the Chinese sibling of the parentheses puzzle solved well: every grouping of
  2 * 3 * 4 * 5 + 1 worked out with its steps, a slip fixed after "等等", one verification pass over
  every grouping ("再检查一遍"), the problem re-read once, then the answer: must not be flagged.
Added after the held-out check (a healthy coding trace pasting its function again and again reached
level 2 there; written before running the detector on it):
- healthy_code_refine: a coding task solved by refining one function: the whole function written out
  four times in ```python fences, each time with a real change (an empty-list guard, an off-by-one in
  the loop bound, a sort-based rewrite, a docstring fix), "wait"/"hmm" between the versions, the
  doctests traced by hand, then the answer: must not be closed.
Seeded, so re-running reproduces the same files.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent

# 2 * 3 * 4 * 5 + 1 = 121; the puzzle asks for 144 (impossible with these wrong evaluations).
CANDIDATES = [
    ("2 * (3 * 4) * 5 + 1", "2*(3*4)*5+1", 121),
    ("2 * 3 * (4 * 5 + 1)", "2*3*(4*5+1)", 126),
    ("(2 * 3 * 4 + 1) * 5", "(2*3*4+1)*5", 125),
]


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def qwq_parentheses_loop(rng: random.Random, chars: int = 7600) -> str:
    out = [
        "The problem says that the expression 2 * 3 * 4 * 5 + 1 equals 121, and asks how many values "
        "we can get by inserting parentheses, in particular whether 144 is one of them. Multiplication is "
        "associative, so only the placement relative to the + 1 matters. Let me try a few groupings.\n\n"
    ]
    while sum(map(len, out)) < chars:
        spaced, tight, value = rng.choice(CANDIDATES)
        expr = rng.choice([spaced, tight])
        out.append(
            _pick(
                rng,
                "Wait, let me check ",
                "Let me recompute ",
                "Hmm, let me try again with ",
                "Let me go back to ",
                "Again, ",
            )
            + expr
            + ". "
            + _pick(
                rng, f"That is {expr} = {value}. ", f"So {expr} = {value}. ", f"Computing: {expr} = {value}. "
            )
            + _pick(rng, "Not 144. ", "That's not 144 either. ", "Still not 144. ", "Hmm, not 144. ")
            + _pick(rng, "We tried that earlier. ", "Maybe I made a mistake. ", "", "Let me double-check. ")
            + ("\n\n" if rng.random() < 0.4 else "")
        )
    return "".join(out)


def qwq_zh_loop(rng: random.Random, chars: int = 5000) -> str:
    out = [
        "题目要求在 2 * 3 * 4 * 5 + 1 中加括号，看看能不能得到 144。乘法满足结合律，所以只需要考虑加一的位置。\n\n"
    ]
    while sum(map(len, out)) < chars:
        spaced, tight, value = rng.choice(CANDIDATES)
        expr = rng.choice([spaced, tight])
        out.append(
            _pick(rng, "等等，再算一遍 ", "我再检查一下 ", "重新计算 ", "回到之前的 ", "还是 ")
            + expr
            + "，"
            + _pick(rng, f"{expr} = {value}。", f"得到 {expr} = {value}。", f"结果是 {expr} = {value}。")
            + _pick(rng, "不是 144。", "还是不对。", "也不是 144。")
            + _pick(rng, "之前已经试过了。", "是不是哪里算错了？", "")
            + ("\n\n" if rng.random() < 0.4 else "")
        )
    return "".join(out)


def qwq_options_loop(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "The question asks which mechanism explains the observed shift; the options are A to E. Option A "
        "is thermal expansion, option B is a phase transition, option C is a change in bonding, option D "
        "is an impurity effect and option E is a measurement artefact. Let me weigh them.\n\n"
    ]
    reasons = {
        "B": "a phase transition would give a sharp jump",
        "C": "bonding changes are gradual",
        "D": "impurities were ruled out by the purity check",
    }
    while sum(map(len, out)) < chars:
        a, b = rng.sample(sorted(reasons), 2)
        out.append(
            _pick(rng, "Wait, ", "Hmm, ", "Alternatively, ", "Let me check again. ", "Going back, ")
            + f"maybe the answer is {a}, since {reasons[a]}. "
            + _pick(
                rng,
                f"But option {b} also fits, because {reasons[b]}. ",
                f"Then again, option {b}: {reasons[b]}. ",
            )
            + _pick(
                rng, "We tried that earlier. ", "I keep going back and forth. ", f"So is it {a} or {b}? ", ""
            )
            + ("\n\n" if rng.random() < 0.5 else "")
        )
    return "".join(out)


def _groupings(rng: random.Random) -> list[tuple[str, int]]:
    nums = [rng.randint(2, 9) for _ in range(6)]
    rows = []
    for i in range(1, 200):
        a, b, c = nums[i % 6] + i, nums[(i + 1) % 6] * i, nums[(i + 2) % 6] + 2 * i
        rows.append((f"({a} + {b}) * {c}", (a + b) * c))
    return rows


def healthy_enumeration(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "We need to list every case and compute its value, then take the largest. Let me go case by case.\n\n"
    ]
    for i, (expr, value) in enumerate(_groupings(rng), 1):
        if sum(map(len, out)) >= chars:
            break
        out.append(
            f"Case {i}: "
            + _pick(rng, "compute ", "evaluate ", "")
            + f"{expr} = {value}. "
            + _pick(rng, "Noted.", "Next case.", f"So case {i} gives {value}.", "")
            + "\n"
        )
    out.append("\nThe largest value is the one from the last case, so that is the answer.\n")
    return "".join(out)


def healthy_verify_once(rng: random.Random) -> str:
    rows = _groupings(rng)[:80]
    out = ["Let me enumerate the groupings and compute each value.\n\n"]
    for i, (expr, value) in enumerate(rows, 1):
        out.append(f"Grouping {i}: {expr} = {value}.\n")
    out.append("\nWait, let me double-check each of these once before answering.\n\n")
    for i, (expr, value) in enumerate(rows, 1):
        out.append(
            f"Check grouping {i}: {expr} = {value}, " + _pick(rng, "correct.", "yes.", "confirmed.") + "\n"
        )
    out.append("\nAll values are confirmed, so there are 80 distinct values and the answer is 80.\n")
    return "".join(out)


_QUANTITIES = [
    ("the speed of the first train", "120 km in 1.5 hours", "80 km/h"),
    ("the speed of the second train", "150 km in 2.5 hours", "60 km/h"),
    ("the time until they meet", "the 280 km gap closing at 80 + 60 = 140 km/h", "2 hours"),
]


def qwq_rederive_loop(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "Two trains leave stations 280 km apart and drive towards each other; the first covers 120 km in "
        "1.5 hours, the second 150 km in 2.5 hours. The question asks where they meet, measured from the "
        "first station. First I set up a coordinate along the track with the first station at zero. "
        "The first train moves in the positive direction, the second starts at 280 and moves back. "
        "Both start at the same moment, so the meeting time is the same for both trains. "
        "I will need each speed, then the closing speed, then the time, then the distance. "
        "Units are kilometres and hours throughout, so no conversion is needed anywhere. "
        "The answer should be a distance between 0 and 280 km, which gives a sanity check.\n\n"
    ]
    while sum(map(len, out)) < chars:
        what, data, value = rng.choice(_QUANTITIES)
        out.append(
            _pick(rng, "Wait, ", "Hmm, wait. ", "Let me go back. ", "Again, ", "Hold on, let me recheck. ")
            + _pick(rng, f"{what} comes from {data}, ", f"for {what} I use {data}, ", f"{what}: {data}, ")
            + _pick(rng, f"which gives {value}. ", f"so that is {value}. ", f"that is {value} again. ")
            + _pick(
                rng,
                "I computed that before. ",
                "Same as earlier. ",
                "But something feels off about the distance. ",
                "Let me re-check the setup instead. ",
                "",
            )
            + ("\n\n" if rng.random() < 0.5 else "")
        )
    return "".join(out)


def healthy_many_waits(rng: random.Random, chars: int = 9000) -> str:
    out = ["We need the sum of the digit sums of the first numbers of the sequence a(n) = 7n + 3.\n\n"]
    n, total = 1, 0
    while sum(map(len, out)) < chars:
        a = 7 * n + 3
        d = sum(map(int, str(a)))
        total += d
        out.append(
            _pick(rng, "Wait, ", "Let me check: ", "Hmm, ", "OK, ", "Next, ")
            + f"for n = {n} the term is 7 * {n} + 3 = {a}, "
            + _pick(rng, f"its digits add to {d}", f"digit sum {d}", f"and {d} is its digit sum")
            + f", running total {total}.\n"
        )
        n += 1
    out.append(f"\nWait, the last running total is {total}, so the answer is {total}.\n")
    return "".join(out)


_OPTIONS = {
    "A": ("thermal expansion", "the shift is too large for the measured temperature change"),
    "B": ("a phase transition", "the sharp jump at 310 K is exactly what a transition gives"),
    "C": ("a change in bonding", "the spectra show the same bonds before and after"),
    "D": ("an impurity effect", "the sample passed the purity check at 99.9%"),
    "E": ("a measurement artefact", "three instruments agree on the shift"),
}

_MEASURES = [
    ("the lattice constant", 402),
    ("the resistivity", 17),
    ("the heat capacity peak", 310),
    ("the Raman line", 520),
    ("the density", 7),
    ("the magnetic susceptibility", 3),
    ("the sound velocity", 4800),
    ("the thermal conductivity", 148),
]


def healthy_options_weighed(rng: random.Random) -> str:
    out = [
        "The question asks which mechanism explains the shift observed in the sample; the options are A "
        "to E. I will weigh each against the data: the sharp jump at 310 K, the unchanged spectra, the "
        "purity check, and the agreement of three instruments.\n\n"
    ]
    for letter, (name, why) in _OPTIONS.items():
        out.append(_pick(rng, "Wait, ", "Now ", "Next, ") + f"option {letter}, {name}: {why}. ")
        for k, (measure, reading) in enumerate(_MEASURES):
            out.append(
                _pick(rng, "Against ", "Compare with ", "Then ")
                + f"{measure}, which reads {reading + 3 * k + ord(letter) % 7}: "
                + _pick(
                    rng,
                    f"under {name} that value would be expected to change with the temperature. ",
                    f"{name} predicts a different trend on this reading. ",
                    f"this is neutral for {name}. ",
                )
            )
        out.append("\n\n")
    out.append(
        "Wait, let me reconsider option A once more, since heating does expand the lattice: but the "
        "expansion coefficient gives a shift a hundred times smaller than observed, so A is out.\n\n"
        "So the answer is B: a phase transition explains the sharp jump, and every other option "
        "contradicts one of the measurements.\n"
    )
    return "".join(out)


_24_CANDIDATES = [
    ("(8 + 8) * 3 / 3", 16),
    ("8 * 3 + 8 - 3", 29),
    ("(8 - 3) * 3 + 8", 23),
    ("8 * (3 + 3) - 8", 40),
]
_24_IDEAS = [
    "Maybe division helps: 8 / 3 is not an integer, but fractions are allowed. ",
    "What about subtracting first, like 3 - 8 / 3, which is 1/3? ",
    "Perhaps the two 8s should not be added together. ",
    "Multiplying everything gives 8 * 8 * 3 * 3 = 576, far too big. ",
]


def qwq_24_loop(rng: random.Random, chars: int = 8000) -> str:
    out = [
        "We must make 24 from 3, 3, 8, 8 using each number once with +, -, *, / and parentheses. "
        "Obvious tries first: 8 * 3 = 24 already, but then a 3 and an 8 are left over and must cancel.\n\n"
    ]
    while sum(map(len, out)) < chars:
        expr, value = rng.choice(_24_CANDIDATES)
        out.append(
            _pick(rng, "Let me try ", "Try ", "Hmm, ", "Alternatively, ", "What about ", "Wait, again ")
            + f"{expr} = {value}. "
            + _pick(rng, "Not 24. ", f"{value}, not 24. ", "No. ", "That doesn't work. ")
            + (rng.choice(_24_IDEAS) if rng.random() < 0.25 else "")
            + _pick(rng, "", "", "I think I tried this. ", "Let me think differently. ")
            + ("\n\n" if rng.random() < 0.3 else "")
        )
    return "".join(out)


def healthy_reconfirm(rng: random.Random) -> str:
    principal, rate, months = 12000.0, 0.06 / 12, 36
    payment = principal * rate / (1 - (1 + rate) ** -months)
    out = [
        f"A loan of {principal:.0f} at 6% a year, paid monthly over {months} months: what is the total "
        f"interest? The monthly payment is P * r / (1 - (1 + r)^-n) = {payment:.2f}. Let me build the "
        "table month by month.\n\n"
    ]
    balance, interest_total = principal, 0.0
    for month in range(1, months + 1):
        interest = balance * rate
        interest_total += interest
        balance -= payment - interest
        out.append(
            f"Month {month}: "
            + _pick(rng, "interest ", "the interest is ", "interest part ")
            + f"{interest:.2f}, principal repaid {payment - interest:.2f}, balance {max(balance, 0):.2f}, "
            + f"interest so far {interest_total:.2f}.\n"
        )
    total = payment * months - principal
    out.append(f"\nSo the answer is {total:.2f} in total interest.\n\n")
    out.append(
        "Wait, let me double-check with the closed form instead of the table: total paid is "
        f"{months} * {payment:.2f} = {payment * months:.2f}, minus the principal {principal:.0f} leaves "
        f"{total:.2f}. "
        f"So the answer is {total:.2f} again, and the table's last running total agrees up to rounding.\n\n"
    )
    out.append(
        "Hmm, one more sanity check: a simple-interest estimate on the average balance, about half the "
        f"principal over three years at 6%, gives roughly {principal / 2 * 0.06 * 3:.0f}, close to the "
        f"exact figure, as it should be. Yes, the answer is {total:.2f}.\n"
    )
    return "".join(out)


_RECOPY_PARAGRAPHS = [
    "the triangle has sides 7, 8 and 9, so by Heron's formula the semi-perimeter is 12 and the area is "
    "sqrt(12 * 5 * 4 * 3) = sqrt(720) = 12 * sqrt(5), which is about 26.83. The inradius is the area "
    "divided by the semi-perimeter, so r = sqrt(5), about 2.236.",
    "the circumradius is R = abc / (4 * area) = 504 / (48 * sqrt(5)) = 21 / (2 * sqrt(5)), about 4.696. "
    "Then the distance between the centres should follow from Euler's formula d^2 = R^2 - 2Rr, which "
    "gives R^2 = 22.05 and 2Rr = 21, so d^2 = 1.05.",
    "but the problem asks for the distance from the incentre to the side of length 8 along the median, "
    "not the distance between the centres, so Euler's formula is not what we need here. The median to "
    "the side of length 8 has length sqrt((2 * 49 + 2 * 81 - 64) / 4) = 7.",
]


def qwq_recopy_loop(rng: random.Random, chars: int = 9000) -> str:
    out = [
        "A triangle has sides 7, 8 and 9. Find the distance from the incentre to the side of length 8, "
        "measured along the median to that side. First the basic quantities. "
        + " ".join(
            f"Side {a} is opposite the angle whose cosine is {c}."
            for a, c in ((7, "2/3"), (8, "11/21"), (9, "2/7"))
        )
        + "\n\nSo "
        + _RECOPY_PARAGRAPHS[0]
        + "\n\nNext, "
        + _RECOPY_PARAGRAPHS[1]
        + "\n\n"
        "I should place coordinates: put the side of length 8 on the x-axis from (0, 0) to (8, 0); the third "
        "vertex is then at (2, 3 * sqrt(5)), since 2^2 + 45 = 49 and 6^2 + 45 = 81.\n\n"
        "Wait, " + _RECOPY_PARAGRAPHS[2] + "\n\n"
    ]
    k = 0
    while sum(map(len, out)) < chars:
        para = _RECOPY_PARAGRAPHS[k % 3]
        k += 1
        out.append(
            _pick(rng, "Wait, ", "Alternatively, ", "Hmm, ", "Let me redo this: ", "Again, ")
            + para
            + "\n\n"
            + _pick(
                rng,
                "",
                "I keep coming back to this. ",
                "Maybe the coordinates make it easier. ",
                "Something is off here. ",
                "Let me think again. ",
            )
        )
    return "".join(out)


def healthy_restate(rng: random.Random) -> str:
    problem = (
        "A tank is filled by pipe A in 6 hours and by pipe B in 9 hours, and drained by pipe C in 12 "
        "hours. Starting empty with all three open, after 2 hours pipe C is closed. How long does the "
        "tank take to fill in total?"
    )
    key = (
        "Pipe A fills 1/6 of the tank per hour, pipe B fills 1/9, and pipe C drains 1/12, so with all three "
        "open the net rate is 1/6 + 1/9 - 1/12 = 6/36 + 4/36 - 3/36 = 7/36 of the tank per hour."
    )
    out = [f"The problem: {problem}\n\n{key}\n\n"]
    filled = 0.0
    for minute in range(0, 121, 10):
        filled = 7 / 36 * minute / 60
        out.append(
            f"At {minute} minutes "
            + _pick(rng, "the tank holds ", "the fill level is ", "we have ")
            + f"{filled:.4f} of the tank ({filled * 36:.2f}/36).\n"
        )
    out.append(
        "\nWait, I should double-check the net rate before going on: 1/6 is 6/36, 1/9 is 4/36, 1/12 is 3/36, "
        "so 6 + 4 - 3 = 7 parts in 36, yes.\n\nAfter 2 hours the tank holds 14/36 = 7/18. Then only A and B "
        "run, at 1/6 + 1/9 = 5/18 per hour, and 11/18 remain.\n\n"
    )
    rest = 11 / 18 / (5 / 18)
    for tenth in range(1, 23):
        t = tenth / 10
        out.append(
            f"After {t:.1f} more hours with A and B: "
            + f"{7 / 18 + 5 / 18 * t:.4f} of the tank"
            + _pick(rng, ".", ", still filling.", ", not yet full.")
            + "\n"
        )
    out.append(
        f"\nWait, {rest:.1f} hours for the remaining 11/18: 11/18 divided by 5/18 is 11/5 = 2.2 hours, which "
        "matches the table reaching 1 at 2.2.\n\nLet me re-read the question to be sure what is asked. "
        f"{problem}\n\nSo the total is 2 + 2.2 = 4.2 hours, that is 4 hours 12 minutes.\n\n"
        f"To summarise the key step: {key} After closing C the rate is 5/18, and the remaining 11/18 takes "
        "2.2 hours.\n\nHmm, one sanity check: without pipe C the whole tank would take 1 / (5/18) = 3.6 "
        "hours, and with C draining for the first 2 hours it must take longer; 4.2 is longer. "
        "So the answer is 4.2 hours.\n"
    )
    return "".join(out)


# Every placement of one pair of parentheses in 2 * 3 * 4 * 5 + 1 that changes something, with the
# steps a careful solver writes out.
_ZH_GROUPINGS = [
    ("2 * 3 * 4 * 5 + 1", "不加括号，先乘后加", "2 * 3 * 4 * 5 = 120，加 1 得 121", 121),
    ("2 * 3 * 4 * (5 + 1)", "括号里 5 + 1 = 6", "2 * 3 * 4 = 24，24 * 6 = 144", 144),
    ("2 * 3 * (4 * 5 + 1)", "括号里 4 * 5 + 1 = 21", "2 * 3 = 6，6 * 21 = 126", 126),
    ("2 * (3 * 4 * 5 + 1)", "括号里 3 * 4 * 5 + 1 = 61", "2 * 61 = 122", 122),
    ("(2 * 3) * (4 * 5) + 1", "两组乘积 6 和 20", "6 * 20 = 120，加 1 得 121", 121),
    ("2 * (3 * 4) * 5 + 1", "括号里 3 * 4 = 12", "2 * 12 = 24，24 * 5 = 120，加 1 得 121", 121),
    ("(2 * 3 * 4) * (5 + 1)", "两个括号分别是 24 和 6", "24 * 6 = 144", 144),
    ("2 * (3 * 4) * (5 + 1)", "括号里 12 和 6", "2 * 12 = 24，24 * 6 = 144", 144),
    ("(2 * 3) * (4 * 5 + 1)", "括号里 6 和 21", "6 * 21 = 126", 126),
    ("2 * ((3 * 4) * 5 + 1)", "内层 3 * 4 = 12，12 * 5 = 60，加 1 得 61", "2 * 61 = 122", 122),
    ("2 * (3 * (4 * 5) + 1)", "内层 4 * 5 = 20，3 * 20 = 60，加 1 得 61", "2 * 61 = 122", 122),
    ("(2 * 3) * (4 * (5 + 1))", "内层 5 + 1 = 6，4 * 6 = 24", "6 * 24 = 144", 144),
]


_ZH_WHY = {
    121: "这里 + 1 在所有乘法之后才加，括号只是改变了乘法的先后，乘积还是 120。",
    144: "这里 + 1 只加到最后的 5 上，把 5 变成 6，相当于 24 乘 6，所以比 121 大很多。",
    126: "这里 + 1 加到 4 * 5 = 20 上，变成 21，前面的 2 * 3 = 6 再乘上去。",
    122: "这里 + 1 加到 3 * 4 * 5 = 60 上，变成 61，只剩一个 2 去乘。",
}


def healthy_zh_verify(rng: random.Random) -> str:
    problem = "题目：在 2 * 3 * 4 * 5 + 1 中插入括号（只能加括号，不能交换顺序），一共能得到多少个不同的值？"
    out = [
        problem + "\n\n先想清楚：乘法满足结合律，只在乘号之间加括号不会改变结果，真正起作用的是把 + 1 "
        "包进括号，让它先于某些乘法计算。下面把每一种加括号的方式列出来，逐个算。\n\n"
    ]
    first: dict[int, int] = {}
    for i, (expr, inner, steps, value) in enumerate(_ZH_GROUPINGS, 1):
        why = _ZH_WHY[value] if value not in first else f"和第 {first[value]} 种的值一样。"
        first.setdefault(value, i)
        out.append(
            f"第 {i} 种：{expr}。"
            + _pick(rng, "", "先看括号。", "按顺序算。")
            + f"{inner}，{steps}。"
            + _pick(rng, f"所以第 {i} 种得到 {value}。", f"结果是 {value}。", f"记下 {value}。")
            + why
            + "\n"
        )
        if i == 8:
            out.append(
                "等等，第 8 种我刚才差点先算了 24 + 1，那样会得到 150；按括号应当是 24 乘 6，"
                "所以 144 是对的。\n"
            )
    out.append(
        "\n整理一下不同的值：第 1、5、6 种是 121，第 2、7、8、12 种是 144，第 3、9 种是 126，"
        "第 4、10、11 种是 122。\n\n"
        "为什么不会有别的值？+ 1 只能加到一个以 5 结尾的乘积上：加到 5 上得 2 * 3 * 4 * 6 = 144，"
        "加到 4 * 5 上得 6 * 21 = 126，加到 3 * 4 * 5 上得 2 * 61 = 122，加到整个乘积上得 121。"
        "括号只在乘号之间移动时，结合律保证结果不变，所以新的值只来自 + 1 的位置，一共四种位置。\n\n"
        "再检查一遍每一种，确认没有算错：\n"
    )
    for i, (expr, _inner, _steps, value) in enumerate(_ZH_GROUPINGS, 1):
        out.append(f"检查第 {i} 种 {expr} = {value}，" + _pick(rng, "没问题。", "对。", "确认。") + "\n")
    out.append(
        "\n再读一遍题目：" + problem + "题目问的是不同值的个数，不是最大值。\n\n"
        "所以不同的值一共有 4 个：121、122、126、144。答案是 4。\n"
    )
    return "".join(out)


_REFINE_HEAD = (
    "def has_close_elements(numbers: list[float], threshold: float) -> bool:\n"
    '    """Whether any two numbers are closer to each other than threshold.\n'
    "    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n"
    "    False\n"
    "    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n"
    "    True\n"
    '    """\n'
)
_REFINE_BODIES = [
    "    for i in range(len(numbers)):\n"
    "        for j in range(i, len(numbers)):\n"
    "            if abs(numbers[i] - numbers[j]) < threshold:\n"
    "                return True\n"
    "    return False\n",
    "    if len(numbers) < 2:\n"
    "        return False\n"
    "    for i in range(len(numbers)):\n"
    "        for j in range(i, len(numbers)):\n"
    "            if abs(numbers[i] - numbers[j]) < threshold:\n"
    "                return True\n"
    "    return False\n",
    "    if len(numbers) < 2:\n"
    "        return False\n"
    "    for i in range(len(numbers)):\n"
    "        for j in range(i + 1, len(numbers)):\n"
    "            if abs(numbers[i] - numbers[j]) < threshold:\n"
    "                return True\n"
    "    return False\n",
    "    ordered = sorted(numbers)\n"
    "    for left, right in zip(ordered, ordered[1:]):\n"
    "        if right - left < threshold:\n"
    "            return True\n"
    "    return False\n",
]
_REFINE_BETWEEN = [
    "Wait, an empty list or a single number has no pair at all; the loops happen to return False "
    "there, but let me make that explicit so the intent is clear.",
    "Hmm, the inner loop starts at j = i, so every number is compared with itself: the difference is "
    "0, which is always below a positive threshold, so this returns True for [1.0, 2.0, 3.0]. The inner "
    "loop must start at i + 1.",
    "Now the first doctest: pairs (1, 2), (1, 3), (2, 3) give 1.0, 2.0, 1.0, none below 0.5, False. The "
    "second: 2.8 and 3.0 differ by 0.2 < 0.3, True. Both pass. But this is quadratic; after sorting, "
    "the closest pair is always adjacent, so one pass over neighbours is enough.",
]


def healthy_code_refine(rng: random.Random) -> str:
    out = [
        "The task: implement has_close_elements, which says whether any two numbers in the list are "
        "closer to each other than the threshold. A first version compares every pair.\n\n"
    ]
    for k, body in enumerate(_REFINE_BODIES):
        out.append("```python\n" + _REFINE_HEAD + body + "```\n\n")
        if k < len(_REFINE_BETWEEN):
            out.append(_REFINE_BETWEEN[k] + "\n\n")
    out.append(
        _pick(rng, "Let me trace the doctests on the sorted version. ", "Checking the doctests again. ")
        + "[1.0, 2.0, 3.0] sorted is the same; neighbours differ by 1.0 and 1.0, not below 0.5, so "
        "False. [1.0, 2.8, 3.0, 4.0, 5.0, 2.0] sorted is [1.0, 2.0, 2.8, 3.0, 4.0, 5.0]; neighbours "
        "differ by 1.0, 0.8, 0.2, 1.0, 1.0, and 0.2 < 0.3, so True. An empty list gives no pairs from "
        "zip, so False, and the length guard is no longer needed. Equal numbers give a difference of 0, "
        "which counts as closer for any positive threshold, as it should.\n\n"
        "The sorted version is O(n log n) and passes both doctests, so that is the answer.\n"
    )
    return "".join(out)


CASES: dict[str, Callable[[random.Random], str]] = {
    "qwq_parentheses_loop": qwq_parentheses_loop,
    "qwq_zh_loop": qwq_zh_loop,
    "qwq_options_loop": qwq_options_loop,
    "healthy_enumeration": healthy_enumeration,
    "healthy_verify_once": healthy_verify_once,
    "qwq_rederive_loop": qwq_rederive_loop,
    "healthy_many_waits": healthy_many_waits,
    "healthy_options_weighed": healthy_options_weighed,
    "qwq_24_loop": qwq_24_loop,
    "healthy_reconfirm": healthy_reconfirm,
    "qwq_recopy_loop": qwq_recopy_loop,
    "healthy_restate": healthy_restate,
    "healthy_zh_verify": healthy_zh_verify,
    "healthy_code_refine": healthy_code_refine,
}

if __name__ == "__main__":
    for name, make in CASES.items():
        (HERE / f"{name}.txt").write_text(make(random.Random(name)), encoding="utf-8")
