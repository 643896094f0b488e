"""Writes the synthetic reasoning samples next to this file: `python tests/data/reasoning/make_samples.py`.

loop_*.txt imitate QwQ's circular reasoning (same few options retried with varied wording) after a
normal start; healthy_*.txt are long reasoning that keeps making progress and must never be flagged.
Everything is seeded, so re-running reproduces the same files.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent


def pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


ASIDES = [
    "This is taking longer than it should.",
    "I keep going back and forth on this.",
    "Okay, focus.",
    "Let me slow down and be careful this time.",
    "Something feels off.",
    "I don't want to give a wrong answer here.",
    "Hmm.",
    "Right.",
    "Let me think about it differently.",
    "Actually, hold on.",
    "Maybe the question is trickier than it looks.",
    "Let me be systematic.",
]


def aside(rng: random.Random) -> str:
    """Filler QwQ sprinkles between attempts; it varies the text without breaking the loop."""
    return rng.choice(ASIDES) + " " if rng.random() < 0.35 else ""


# ---- loops -------------------------------------------------------------------------------------


def loop_strawberry(rng: random.Random, chars: int = 24000) -> str:
    out = [
        "The user asks how many times the letter r appears in the word strawberry. This looks simple, "
        "but I want to be careful, because these letter-counting questions are easy to get wrong when "
        "the word has doubled letters. Let me write the word out and look at each letter in order.\n\n"
        "Strawberry is spelled s, t, r, a, w, b, e, r, r, y. That is ten letters in total. The first r "
        "is the third letter, right after the t. Then there is an a, a w, a b and an e. After the e "
        "there are two r's in a row, and the word ends with a y.\n\n"
    ]
    while sum(map(len, out)) < chars:
        out.append(
            aside(rng)
            + pick(
                rng,
                "Wait, let me recount.",
                "Hmm, let me count again.",
                "Let me check that once more.",
                "Wait, maybe I should recount.",
            )
            + " "
            + pick(rng, "S-t-r-a-w-b-e-r-r-y.", "s, t, r, a, w, b, e, r, r, y.", "S-T-R-A-W-B-E-R-R-Y.")
            + " "
            + pick(
                rng,
                "The r's are at positions 3, 8 and 9.",
                "There is an r at position 3, then r at 8 and 9.",
                "Positions 3, 8, 9 have an r.",
            )
            + " "
            + pick(rng, "So that's three r's.", "That makes 3 r's.", "So the count is 3.")
            + " "
            + pick(
                rng,
                "Hmm, but I remember people saying it has two r's.",
                "But wait, I thought the answer was 2.",
                "Hmm, but maybe it is only two.",
            )
            + " "
            + pick(
                rng,
                "Maybe I miscounted the double r.",
                "Did I count the double r twice?",
                "Perhaps the berry part only has one r.",
            )
            + " "
            + pick(
                rng,
                "Let me check again.",
                "I should verify this again.",
                "Let me go through it one more time.",
            )
            + ("\n\n" if rng.random() < 0.4 else " ")
        )
    return "".join(out)


def loop_parentheses(rng: random.Random, chars: int = 24000) -> str:
    out = [
        "We need to place parentheses in 2 * 3 + 4 * 5 so that the value becomes 60. Without "
        "parentheses the value is 6 + 20 = 26, which is far too small, so the addition has to be done "
        "earlier to make the products larger. There are only a few ways to group four numbers with "
        "three operators, so let me go through them one by one.\n\n"
    ]
    placements = [
        ("(2 * 3) + (4 * 5)", ["6 + 20 = 26", "6 plus 20, so 26", "6 + 20 = 24"]),
        ("2 * (3 + 4) * 5", ["2 * 7 * 5 = 70", "14 times 5 = 70", "2 * 7 = 14, 14 * 5 = 75"]),
        ("(2 * 3 + 4) * 5", ["10 * 5 = 50", "(6 + 4) * 5 = 50", "10 times 5 gives 55"]),
        ("2 * (3 + 4 * 5)", ["2 * 23 = 46", "2 times 23 is 46", "2 * 23 = 48"]),
    ]
    i = 0
    while sum(map(len, out)) < chars:
        expr, values = placements[i % 4]
        i += 1
        out.append(
            aside(rng)
            + pick(rng, "What about", "Let me try", "Another option:", "Maybe", "Let me reconsider")
            + f" {expr}. "
            + pick(rng, "That gives ", "This evaluates to ", "Computing: ", "So ")
            + rng.choice(values)
            + ". "
            + pick(rng, "That's not 60.", "Not 60 either.", "Still not 60.", "Hmm, that doesn't equal 60.")
            + " "
            + pick(
                rng,
                "Maybe I made a mistake earlier.",
                "Did I miss a placement?",
                "Let me go back.",
                "Wait, perhaps I should try the groupings again.",
                "",
            )
            + ("\n\n" if rng.random() < 0.5 else " ")
        )
    return "".join(out)


def loop_pi(rng: random.Random, chars: int = 24000) -> str:
    out = [
        "I want to estimate pi using the Leibniz series, pi = 4 * (1 - 1/3 + 1/5 - 1/7 + ...). The "
        "series converges slowly, so the partial sums should approach 3.14159 from alternating sides. "
        "Let me compute a few partial sums by hand to see how close they get.\n\n"
    ]
    sums = {n: 4 * sum((-1) ** k / (2 * k + 1) for k in range(n)) for n in (4, 5, 10)}
    while sum(map(len, out)) < chars:
        n = rng.choice([4, 5, 10])
        digits = rng.choice([3, 4])
        value = round(sums[n], digits)
        out.append(
            aside(rng)
            + pick(rng, "Let me compute", "Let me redo", "Let me recompute", "Okay, computing")
            + f" the sum with {n} terms: "
            + pick(rng, "1 - 1/3 + 1/5 - 1/7", "1 - 0.3333 + 0.2 - 0.1429", "1 - 1/3 + 1/5 - 1/7 and so on")
            + f", times 4, gives about {value}. "
            + pick(rng, "That's not 3.14159.", "Hmm, that's not quite pi.", "That doesn't match 3.1416.")
            + " "
            + pick(
                rng,
                "Maybe I made an arithmetic error.",
                "Wait, did I add the terms correctly?",
                "Perhaps I should recompute the fractions.",
                "Let me double-check the terms.",
            )
            + " "
            + pick(rng, "Let me try again.", "Let me start over.", "I'll redo it.")
            + ("\n\n" if rng.random() < 0.5 else " ")
        )
    return "".join(out)


# ---- healthy -----------------------------------------------------------------------------------

ORD = [
    "ones",
    "tens",
    "hundreds",
    "thousands",
    "ten-thousands",
    "hundred-thousands",
    "millions",
    "ten-millions",
    "hundred-millions",
    "billions",
    "ten-billions",
    "hundred-billions",
]


def healthy_multiplication(rng: random.Random, words: int = 4000) -> str:
    out: list[str] = []
    while sum(len(p.split()) for p in out) < words:
        a = rng.randrange(10**11, 10**12)
        b = rng.randrange(10**8, 10**9)
        out.append(
            f"Next I need {a} times {b}. "
            + pick(
                rng,
                "I'll do it the school way, one digit of the second number at a time.",
                "Doing this by long multiplication, digit by digit from the right.",
                "Long multiplication it is, working through the multiplier's digits.",
            )
            + "\n\n"
        )
        total = 0
        for pos, d in enumerate(reversed(str(b))):
            d = int(d)
            partial = a * d
            shifted = partial * 10**pos
            new_total = total + shifted
            out.append(
                pick(
                    rng,
                    f"The {ORD[pos]} digit is {d}.",
                    f"Digit {d} sits in the {ORD[pos]} place.",
                    f"Moving to the {ORD[pos]} place, the digit is {d}.",
                )
                + " "
                + pick(
                    rng,
                    f"{a} times {d} is {partial}",
                    f"Multiplying {a} by {d} gives {partial}",
                    f"{d} times {a} comes to {partial}",
                )
                + (f", and shifted {pos} places that is {shifted}." if pos else ".")
                + " "
                + pick(
                    rng,
                    f"Adding it to {total} gives {new_total}.",
                    f"The running total goes from {total} to {new_total}.",
                    f"Running sum: {total} + {shifted} = {new_total}.",
                )
                + ("\n" if rng.random() < 0.3 else " ")
            )
            total = new_total
        out.append(
            f"\n\nSo {a} times {b} equals {total}, and that matches the estimate from the leading "
            f"digits, about {round(a / 10**11) * round(b / 10**8)} times 10 to the 19.\n\n"
        )
    return "".join(out)


def healthy_subproblems(rng: random.Random, words: int = 4000) -> str:
    out: list[str] = ["The exercise sheet has many independent parts; I'll work through them in order.\n\n"]
    names = ["f", "g", "h", "p", "q", "r"]
    k = 0

    def deriv() -> str:
        c = [rng.randint(-9, 9) or 1 for _ in range(4)]
        n = names[k % 6]
        return (
            f"Part {k}: differentiate {n}(x) = {c[0]}x^3 + {c[1]}x^2 + {c[2]}x + {c[3]}. The power "
            f"rule brings each exponent down: {3 * c[0]}x^2 + {2 * c[1]}x + {c[2]}, the constant "
            f"disappears. At x = {k % 5 + 1} the slope is "
            f"{3 * c[0] * (k % 5 + 1) ** 2 + 2 * c[1] * (k % 5 + 1) + c[2]}."
        )

    def gcd() -> str:
        a, b = rng.randint(1000, 99999), rng.randint(100, 9999)
        steps, x, y = [], a, b
        while y:
            steps.append(f"{x} = {x // y}*{y} + {x % y}")
            x, y = y, x % y
        return (
            f"Part {k} asks for gcd({a}, {b}). Euclid's algorithm: "
            + "; ".join(steps)
            + f". The last non-zero remainder is {x}, so the gcd is {x}"
            + (" and the numbers are coprime." if x == 1 else ".")
        )

    def quadratic() -> str:
        r1, r2 = rng.randint(-30, 30), rng.randint(-30, 30)
        bb, cc = -(r1 + r2), r1 * r2
        disc = bb * bb - 4 * cc
        return (
            f"In part {k} the quadratic is x^2 + ({bb})x + ({cc}) = 0. The discriminant is "
            f"{bb}^2 - 4*{cc} = {disc}, a perfect square with root {abs(r1 - r2)}, hence the roots are "
            f"{max(r1, r2)} and {min(r1, r2)}; their sum {r1 + r2} and product {cc} agree with Vieta."
        )

    def factor() -> str:
        n = rng.randint(2000, 999999)
        m, fs, p = n, [], 2
        while p * p <= m:
            while m % p == 0:
                fs.append(p)
                m //= p
            p += 1
        if m > 1:
            fs.append(m)
        return (
            f"Part {k} wants the prime factorisation of {n}. Trial division up to its square root, "
            f"about {math.isqrt(n)}, finds "
            + " * ".join(map(str, fs))
            + (f", so {n} is prime." if len(fs) == 1 else f"; multiplying back gives {n} as a check.")
        )

    def integral() -> str:
        a, b, lo, hi = rng.randint(1, 12), rng.randint(1, 12), rng.randint(0, 4), rng.randint(5, 14)
        val = a * (hi**3 - lo**3) / 3 + b * (hi**2 - lo**2) / 2
        return (
            f"Part {k} is the definite integral of {a}t^2 + {b}t from {lo} to {hi}. An antiderivative is "
            f"{a}/3 t^3 + {b}/2 t^2; evaluating between the limits gives {val:.4f}."
        )

    def system() -> str:
        x, y = rng.randint(-20, 20), rng.randint(-20, 20)
        a, b, c, d = (rng.randint(1, 15) for _ in range(4))
        det = a * d - b * c or 1
        return (
            f"For part {k}, solve {a}x + {b}y = {a * x + b * y} together with {c}x + {d}y = {c * x + d * y}. "
            f"Cramer's rule: the determinant is {a}*{d} - {b}*{c} = {a * d - b * c}"
            + (f", giving x = {x} and y = {y}, which I confirm by substitution." if det else ".")
        )

    makers: list[Callable[[], str]] = [deriv, gcd, quadratic, factor, integral, system]
    while sum(len(p.split()) for p in out) < words:
        k += 1
        out.append(rng.choice(makers)() + ("\n\n" if rng.random() < 0.6 else " "))
    return "".join(out)


PROOF = """We prove that every tree with n vertices has exactly n - 1 edges, and then use that fact to
derive several properties of forests, spanning trees and cycle spaces. The argument is by induction,
but the induction needs a lemma about leaves, so we start there.

Lemma one says that a finite tree with at least two vertices has a leaf. Take a longest path in the tree.
Its endpoint cannot have a neighbour outside the path, since the path would then extend; and it cannot
have a second neighbour on the path, since that would close a cycle. Hence the endpoint has degree one.

The base case of the main claim is a single vertex with no edges, where n - 1 = 0 holds trivially. For
the inductive step remove a leaf together with its unique edge. What remains is still connected, because
no path between two other vertices ever passed through a vertex of degree one, and it is still acyclic,
because deleting edges cannot create cycles. So the smaller graph is a tree on one fewer vertex.

By the inductive hypothesis it has exactly n - 2 edges, and adding back the leaf restores one edge,
which gives n - 1. That completes the induction.
"""


def healthy_proof(rng: random.Random, words: int = 4000) -> str:
    """A long proof: a fixed opening, then a chain of distinct lemmas about concrete graphs."""
    out = [PROOF, "\n"]
    topics = [
        (
            "forest with {c} components on {n} vertices",
            "has {e} edges, since each component is a tree "
            "and contributes its vertex count minus one, so the total is {n} minus {c}",
        ),
        (
            "connected graph on {n} vertices with {m} edges",
            "has cycle rank {r}: a spanning tree uses "
            "{e} of the edges and each of the remaining {r} closes exactly one fundamental cycle",
        ),
        (
            "complete graph on {k} vertices",
            "has {kt} spanning trees by Cayley's formula, which we "
            "double-check through the Prüfer sequences of length {k2}, each entry chosen among {k} labels",
        ),
        (
            "bipartite graph with parts of size {a} and {b}",
            "cannot contain an odd cycle, because every "
            "walk alternates sides and returns home only after an even number, here at most {ab2}, of steps",
        ),
        (
            "grid graph of {a} rows by {b} columns",
            "has {ge} edges and therefore cycle rank {gr}, one "
            "independent cycle per unit square of the grid, matching Euler's formula for planar graphs",
        ),
        (
            "hypercube of dimension {d}",
            "has {hv} vertices of degree {d}, so the handshake lemma gives "
            "{he} edges; its cycle rank is consequently {hr}",
        ),
    ]
    openers = [
        "Next consider a",
        "Now take a",
        "As a further application, look at a",
        "We turn to a",
        "Another consequence concerns a",
        "The same reasoning handles a",
        "Let us examine a",
    ]
    closers = [
        "This is consistent with the bound proved above.",
        "Here the edge count and the vertex count move in lockstep.",
        "Readers who prefer matrices can confirm it with the incidence matrix rank.",
        "Degenerate inputs, like an empty edge set, fit the pattern too.",
        "So nothing changes when multiple components are present.",
        "In particular the claim is sharp: removing any edge breaks connectivity.",
        "Kirchhoff's theorem would give the same number, at much greater expense.",
        "Planarity plays no role in this step, only acyclicity does.",
        "This settles the case; the general statement follows by additivity over blocks.",
        "A quick sanity check on a triangle with a pendant vertex agrees.",
        "No new idea is needed beyond the leaf lemma.",
        "The count can be verified by direct enumeration for small cases.",
        "Notice how the formula degenerates gracefully when the graph is a single vertex.",
        "Together with the previous paragraph this pins down the structure completely.",
        "The inductive proof adapts without change, removing one leaf at a time.",
        "An independent check follows from counting degrees instead of edges.",
    ]
    while sum(len(p.split()) for p in out) < words:
        t, claim = rng.choice(topics)
        n, c = rng.randint(10, 5000), rng.randint(2, 9)
        m = n - 1 + rng.randint(1, 500)
        k, a, b, d = rng.randint(4, 40), rng.randint(2, 60), rng.randint(2, 60), rng.randint(3, 16)
        v = dict(
            n=n,
            c=c,
            e=n - c if "forest" in t else n - 1,
            m=m,
            r=m - n + 1,
            k=k,
            kt=k ** (k - 2),
            k2=k - 2,
            a=a,
            b=b,
            ab2=2 * min(a, b),
            ge=a * (b - 1) + b * (a - 1),
            gr=(a - 1) * (b - 1),
            d=d,
            hv=2**d,
            he=d * 2 ** (d - 1),
            hr=d * 2 ** (d - 1) - 2**d + 1,
        )
        closer = rng.choice(closers) if rng.random() < 0.5 else ""
        out.append(
            f"{rng.choice(openers)} {t.format(**v)}. It {claim.format(**v)}. {closer}"
            + ("\n\n" if rng.random() < 0.5 else " ")
        )
    return "".join(out)


def healthy_code(rng: random.Random, words: int = 4000) -> str:
    """Code reasoning: tracing insertion sort and binary search on fresh arrays, state by state."""
    out = ["To be sure the function is correct I'll trace it by hand on several inputs.\n\n"]
    while sum(len(p.split()) for p in out) < words:
        arr = rng.sample(range(1, 1000), rng.randint(6, 9))
        out.append(f"Input list: {arr}. insertion_sort walks i from 1 to {len(arr) - 1}.\n")
        a = list(arr)
        for i in range(1, len(a)):
            key, j = a[i], i - 1
            moved = 0
            while j >= 0 and a[j] > key:
                a[j + 1] = a[j]
                j -= 1
                moved += 1
            a[j + 1] = key
            out.append(
                pick(
                    rng,
                    f"With i = {i} the key is {key};",
                    f"At i = {i}, key = {key};",
                    f"Step i = {i} takes {key};",
                )
                + " "
                + (
                    f"it shifts {moved} larger element{'s' if moved != 1 else ''} right and lands at index {j + 1}"
                    if moved
                    else f"{key} is already not smaller than its left neighbour, nothing moves"
                )
                + f", list now {a}.\n"
            )
        target = rng.choice(a)
        lo, hi = 0, len(a) - 1
        out.append(f"Then binary_search(sorted, {target}): lo = {lo}, hi = {hi}. ")
        while lo <= hi:
            mid = (lo + hi) // 2
            if a[mid] == target:
                out.append(f"mid = {mid} holds {a[mid]}, found, return {mid}.\n\n")
                break
            if a[mid] < target:
                out.append(f"mid = {mid} holds {a[mid]} < {target}, so lo becomes {mid + 1}. ")
                lo = mid + 1
            else:
                out.append(f"mid = {mid} holds {a[mid]} > {target}, so hi becomes {mid - 1}. ")
                hi = mid - 1
    return "".join(out)


SAMPLES: dict[str, Callable[[random.Random], str]] = {
    "loop_strawberry": loop_strawberry,
    "loop_parentheses": loop_parentheses,
    "loop_pi": loop_pi,
    "healthy_multiplication": healthy_multiplication,
    "healthy_subproblems": healthy_subproblems,
    "healthy_proof": healthy_proof,
    "healthy_code": healthy_code,
}


def main() -> None:
    for name, make in SAMPLES.items():
        (HERE / f"{name}.txt").write_text(make(random.Random(name)), encoding="utf-8")


if __name__ == "__main__":
    main()
