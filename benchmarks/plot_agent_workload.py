"""Chart of `agent_workload.py` results: cached share and TTFT per turn, one line per configuration.

python benchmarks/plot_agent_workload.py benchmarks/results/agent_workload-DEVICE-DATE.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(path: Path) -> Path:
    configs = json.loads(path.read_text())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for cfg in configs:
        turns = [t["turn"] for t in cfg["per_turn"]]
        label = cfg["label"]
        ax1.plot(turns, [100 * t["cached_share"] for t in cfg["per_turn"]], marker="o", label=label)
        ax2.plot(turns, [t["ttft_p50_s"] for t in cfg["per_turn"]], marker="o", label=label)
    ax1.set(
        title="prompt tokens served from the KV cache",
        xlabel="turn",
        ylabel="cached share (%)",
        ylim=(0, 105),
    )
    ax2.set(title="time to first token (p50)", xlabel="turn", ylabel="seconds", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(path.stem)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1])))
