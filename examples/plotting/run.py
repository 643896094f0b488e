"""A question answered with a figure: the python tool draws it in the sandbox, the harness saves it.

python examples/plotting/run.py [--images DIR]

The figure comes back from the sandbox as a PNG; the screen prints its absolute path (by default in the
folder named after the run's trace, traces/example-fibonacci-plot-images/ for the first run in a folder),
which a terminal or an image viewer opens from anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Example, main, tool_outputs
from recording import call, turn

TASK = (
    "Plot the ratio F(n+1)/F(n) of consecutive Fibonacci numbers for n = 1..20 and tell me what it "
    "converges to."
)

CODE = """\
import matplotlib.pyplot as plt

fib = [1, 1]
while len(fib) < 22:
    fib.append(fib[-1] + fib[-2])
ratios = [fib[n] / fib[n - 1] for n in range(2, 22)]
phi = (1 + 5 ** 0.5) / 2
plt.plot(range(1, 21), ratios, marker="o", label="F(n+1) / F(n)")
plt.axhline(phi, color="gray", linestyle="--", label="(1 + √5) / 2")
plt.xlabel("n")
plt.title("Ratios of consecutive Fibonacci numbers")
plt.legend()
print(f"n=20: {ratios[-1]:.10f}  phi: {phi:.10f}  gap: {abs(ratios[-1] - phi):.1e}")"""

TURNS = [
    turn(
        "The ratios should approach the golden ratio (1 + sqrt 5) / 2, alternating above and below it. "
        "Rather than list twenty fractions by hand, I'll compute them and draw them against phi; the "
        "sandbox returns the figure.",
        "I'll compute the ratios and plot them against the golden ratio.",
        call("python", code=CODE),
    ),
    turn(
        "The plot shows the ratios zig-zagging around the dashed line and closing in fast; at n = 20 "
        "the ratio is 1.6180339850, 3.7e-09 from phi = 1.6180339887.",
        "The ratio F(n+1)/F(n) converges to the golden ratio **φ = (1 + √5)/2 ≈ 1.6180339887**. It "
        "alternates above and below φ (2, 1.5, 1.667, 1.6, …), and at n = 20 it is 1.6180339850, "
        "within 4·10⁻⁹ of φ. The figure shows the ratios against the dashed line at φ.",
    ),
]


async def check(result, sandbox) -> list[str]:
    problems = []
    outputs = tool_outputs(result)
    if not any("1.6180339850" in o and "phi: 1.6180339887" in o for o in outputs):
        problems.append(f"the python output does not hold the computed ratio: {outputs}")
    if not any("[1 figure(s) rendered]" in o for o in outputs):
        problems.append("the python call rendered no figure")
    if "1.6180339887" not in (result.answer or ""):
        problems.append("the answer does not give phi")
    return problems


EXAMPLE = Example("fibonacci-plot", TASK, ["python"], TURNS, check, figures=1)

if __name__ == "__main__":
    sys.exit(main(EXAMPLE, sys.argv[1:]))
