"""`outward_reason` judges a link from a tree alone: the live files of the sandbox play no part."""

from __future__ import annotations

import pytest

from qwq_agent.agent.link_judge import LINK, MAX_HOPS, TREE, outward_reason

BLOB = "100644"


def judge(path: str, target: str, tree: dict[str, tuple[str, str]], blobs: dict[str, str]) -> str | None:
    return outward_reason(path, target, tree.get, blobs.__getitem__)


TREE_ = {
    "a": (TREE, "t1"),
    "a/b": (TREE, "t2"),
    "a/b/f": (BLOB, "b1"),
    "up": (LINK, "l1"),  # up -> ..
    "deep": (LINK, "l2"),  # deep -> a/b
    "abs": (LINK, "l3"),  # abs -> /etc
    "loop": (LINK, "l4"),  # loop -> loop
}
BLOBS = {"l1": "..", "l2": "a/b", "l3": "/etc", "l4": "loop"}


@pytest.mark.parametrize(
    ("path", "target", "why"),
    [
        ("x", "/etc/passwd", "absolute"),
        ("x", "a/b/f", None),
        ("a/b/x", "../../README.md", None),  # dangling, but inside
        ("x", "../x", "leads out of the repository"),
        ("x", "../" * 12 + "workspace/README.md", "leads out of the repository"),
        ("x", "deep/../f", None),  # `..` after a link is taken from where the link leads
        ("x", "deep/../../../etc", "leads out of the repository"),
        ("x", "a/../up/etc", "leads out of the repository"),
        ("a/x", "up/etc", "leads through a path the patch does not hold"),
        ("x", ".venv/../../etc", "leads through a path the patch does not hold"),
        ("x", "gone/..", "leads through a path the patch does not hold"),
        ("x", "a/b/f/..", "leads through a file"),
        ("x", "abs/passwd", "leads through an absolute link"),
        ("x", "loop/x", "too many levels of links"),
    ],
)
def test_outward_reason(path: str, target: str, why: str | None) -> None:
    assert judge(path, target, TREE_, BLOBS) == why


def test_a_chain_of_links_up_to_the_hop_limit_is_followed() -> None:
    tree = {f"l{i}": (LINK, f"o{i}") for i in range(MAX_HOPS)}
    blobs = {f"o{i}": f"l{i + 1}" for i in range(MAX_HOPS)}
    tree["l40"] = (BLOB, "end")
    assert judge("x", "l0", tree, blobs) is None
