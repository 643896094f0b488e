"""Recorded completions for the three tasks QwQ is known to loop on, each solved with Python."""

from recording import call, turn

STRAWBERRY_TASK = 'How many times does the letter "r" occur in the word "strawberry"?'
STRAWBERRY = [
    turn(
        'The user asks how many r\'s are in "strawberry". Counting letters by eye is exactly where I '
        "tend to go around in circles (s-t-r-a-w-b-e-r-r-y... is the double r one or two?). A Python "
        "call settles it in one step.",
        "Let me count with Python.",
        call(
            "python",
            code="word = 'strawberry'\npositions = [i + 1 for i, ch in enumerate(word) if ch == 'r']\nprint(len(positions), positions)",
        ),
    ),
    turn(
        'Python printed 3 and the positions [3, 8, 9]: one r after "st" and the double r in "berry".',
        'The letter "r" occurs **3** times in "strawberry" (positions 3, 8 and 9).',
    ),
]

PARENS_TASK = (
    "Add exactly one pair of parentheses to the expression 1 + 2 * 3 + 4 * 5 + 6 * 7 + 8 * 9 = 479 "
    "so that the equation becomes true."
)
PARENS = [
    turn(
        "Without parentheses the left side is 1 + 6 + 20 + 42 + 72 = 141, far from 479. Trying placements "
        "by hand is where I would loop; there are only 36 ways to place one pair around a run of numbers, "
        "so I'll let Python try them all.",
        "I'll search every placement of one pair of parentheses.",
        call(
            "python",
            code=(
                "import itertools\n"
                "tokens = '1 + 2 * 3 + 4 * 5 + 6 * 7 + 8 * 9'.split()\n"
                "nums = [i for i, t in enumerate(tokens) if t.isdigit()]\n"
                "hits = []\n"
                "for a, b in itertools.combinations(nums, 2):\n"
                "    expr = ' '.join(tokens[:a] + ['('] + tokens[a:b + 1] + [')'] + tokens[b + 1:])\n"
                "    if eval(expr) == 479:\n"
                "        hits.append(expr.replace('( ', '(').replace(' )', ')'))\n"
                "print(hits)"
            ),
        ),
    ),
    turn(
        "Exactly one placement works: 1 + 2 * (3 + 4 * 5 + 6) * 7 + 8 * 9. Check: 3 + 20 + 6 = 29, "
        "2 * 29 * 7 = 406, 1 + 406 + 72 = 479.",
        "Put the parentheses around 3 + 4 * 5 + 6:\n\n**1 + 2 * (3 + 4 * 5 + 6) * 7 + 8 * 9 = 479**\n\n"
        "(3 + 20 + 6 = 29; 2 × 29 × 7 = 406; 1 + 406 + 72 = 479.)",
    ),
]

PI_TASK = "Show numerically that pi > 3.05, without using a stored value of pi."
PI = [
    turn(
        "A regular polygon inscribed in a circle has a perimeter shorter than the circle. For a unit "
        "circle a regular 12-gon has side 2 sin(15°) = sqrt(2 - sqrt(3)), so pi > 6 * sqrt(2 - sqrt(3)). "
        "I'll compute it with exact square roots in Python rather than estimate by hand.",
        "Let me compute the half-perimeter of the inscribed regular 12-gon.",
        call(
            "python",
            code=(
                "from decimal import Decimal, getcontext\n"
                "getcontext().prec = 30\n"
                "side = (Decimal(2) - Decimal(3).sqrt()).sqrt()\n"
                "lower = 6 * side\n"
                "print(lower, lower > Decimal('3.05'))"
            ),
        ),
    ),
    turn(
        "The 12-gon gives a lower bound of 3.10582854... and Python confirms it is greater than 3.05.",
        "A regular 12-gon inscribed in the unit circle has perimeter 12·√(2 − √3), which is shorter than "
        "the circumference 2π. Hence π > 6·√(2 − √3) = 3.1058… > 3.05.",
    ),
]

EXAMPLES = {
    "strawberry": (STRAWBERRY_TASK, STRAWBERRY),
    "parentheses": (PARENS_TASK, PARENS),
    "pi": (PI_TASK, PI),
}
