"""The sandbox image: built by the real engine, checked from inside real containers.

The first docker test builds the image when it is missing (minutes); later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.sandbox.image import (
    ImageBuildError,
    Recipe,
    RecipeError,
    build_image,
    ensure_image,
    image_exists,
    image_tag,
)
from qwq_agent.sandbox.image.mode import requested_mode
from qwq_agent.sandbox.image.recipe import HASH_LABEL, LABEL, RECIPE_DIR, SUPERVISOR_PATH

ENTRYPOINT = ["/usr/bin/tini", "--", "python3", "-I", "-u", "/opt/qwq/supervisor/boot.py"]


def _docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker engine not reachable: {exc}")
    return client


@pytest.fixture(scope="module")
def client():
    c = _docker_client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(client) -> str:
    return ensure_image(progress=lambda line: print(line, flush=True))


def run_in(client, image: str, argv: list[str], *, user: str | None = None) -> tuple[int, str]:
    """Run `argv` in a fresh container without network; return (exit code, stdout+stderr)."""
    container = client.containers.create(image, command=argv, entrypoint="", network_mode="none", user=user)
    try:
        container.start()
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


# --- recipe hashing (no engine needed) ---------------------------------------------------------


@pytest.fixture()
def recipe_copy(tmp_path: Path) -> Recipe:
    directory = tmp_path / "recipe"
    shutil.copytree(RECIPE_DIR, directory)
    supervisor = tmp_path / "supervisor"
    if SUPERVISOR_PATH.is_dir():
        shutil.copytree(SUPERVISOR_PATH, supervisor, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        supervisor.mkdir()
        shutil.copy(RECIPE_DIR / "placeholder_supervisor.py", supervisor / "boot.py")
    return Recipe(directory, supervisor)


def test_copy_of_recipe_hashes_like_the_original(recipe_copy: Recipe) -> None:
    assert recipe_copy.image_tag() == image_tag()
    assert recipe_copy.base_tag() == Recipe().base_tag()
    assert image_tag().startswith("qwq-agent-sandbox:")
    assert Recipe().base_tag().startswith("qwq-agent-sandbox-base:")


def test_package_change_changes_both_tags(recipe_copy: Recipe) -> None:
    before_base, before_image = recipe_copy.base_tag(), recipe_copy.image_tag()
    packages = recipe_copy.directory / "packages.txt"
    packages.write_text(packages.read_text() + "jq\n")
    assert recipe_copy.base_tag() != before_base
    assert recipe_copy.image_tag() != before_image


def test_supervisor_change_keeps_the_base(recipe_copy: Recipe) -> None:
    before_base, before_image = recipe_copy.base_tag(), recipe_copy.image_tag()
    boot = recipe_copy.supervisor / "boot.py"
    boot.write_text(boot.read_text() + "\n# changed\n")
    assert recipe_copy.base_tag() == before_base
    assert recipe_copy.image_tag() != before_image


def test_dockerfile_change_keeps_the_base(recipe_copy: Recipe) -> None:
    before_base, before_image = recipe_copy.base_tag(), recipe_copy.image_tag()
    dockerfile = recipe_copy.directory / "final.Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "LABEL x=y\n")
    assert recipe_copy.base_tag() == before_base
    assert recipe_copy.image_tag() != before_image


# Build inputs that live in the builder's code, not in recipe files. Each is edited in a copy of the
# package, and the copy's tags are computed in a process of its own (the edit is to module code).
_CODE_INPUTS = {
    "base ENV": ("sandbox/image/debian.py", '"ENV MPLBACKEND=Agg",', '"ENV MPLBACKEND=svg",', True),
    "base LABEL": ("sandbox/image/debian.py", 'f"LABEL {LABEL}=1 ', 'f"LABEL {LABEL}=1 x=y ', True),
    "python shim": ("sandbox/image/final.py", 'exec python3 "$@"', 'exec python3 -I "$@"', False),
    "supervisor mode": (
        "sandbox/image/final.py",
        'add(f"root/opt/qwq/supervisor/{name}", data, 0o644)',
        'add(f"root/opt/qwq/supervisor/{name}", data, 0o600)',
        False,
    ),
}

_TAGS_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import qwq_agent
from qwq_agent.sandbox.image import Recipe
r = Recipe()
print(json.dumps({"package": qwq_agent.__file__, "base": r.base_tag(), "image": r.image_tag()}))
"""


def _package_copy(root: Path) -> Path:
    import qwq_agent

    shutil.copytree(
        Path(qwq_agent.__file__).parent, root / "qwq_agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root / "qwq_agent"


def _tags_of(root: Path) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _TAGS_PROBE, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    tags = json.loads(proc.stdout)
    assert Path(tags["package"]).is_relative_to(root), tags  # the copy, not the installed package
    return tags


@pytest.fixture(scope="module")
def unchanged_tags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("unchanged")
    _package_copy(root)
    return _tags_of(root)


@pytest.mark.parametrize("which", sorted(_CODE_INPUTS))
def test_build_input_in_code_changes_the_tags(
    which: str, tmp_path: Path, unchanged_tags: dict[str, str]
) -> None:
    module, old, new, in_base = _CODE_INPUTS[which]
    path = _package_copy(tmp_path) / module
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {module}"
    path.write_text(text.replace(old, new))
    tags = _tags_of(tmp_path)
    # A tag that stays the same would have the next build reuse the image built from the old input.
    assert tags["image"] != unchanged_tags["image"]
    assert (tags["base"] != unchanged_tags["base"]) is in_base


def test_missing_supervisor_falls_back_to_placeholder(recipe_copy: Recipe) -> None:
    shutil.rmtree(recipe_copy.supervisor)
    assert recipe_copy.uses_placeholder()
    assert recipe_copy.supervisor_file().name == "placeholder_supervisor.py"


def test_missing_recipe_file_is_a_clear_error(recipe_copy: Recipe) -> None:
    (recipe_copy.directory / "packages.txt").unlink()
    with pytest.raises(RecipeError, match=r"packages\.txt"):
        recipe_copy.image_tag()


def test_bad_build_mode_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWQ_SANDBOX_BUILD", "kaniko")
    with pytest.raises(ValueError, match="QWQ_SANDBOX_BUILD"):
        requested_mode()
    with pytest.raises(ImageBuildError, match="QWQ_SANDBOX_BUILD"):
        build_image(progress=lambda _line: None, force=True)


def test_empty_tag_is_rejected() -> None:
    with pytest.raises(ValueError):
        image_exists("")


# --- the built image ---------------------------------------------------------------------------


@pytest.mark.docker
def test_image_exists_after_ensure(client, image: str) -> None:
    assert image == image_tag()
    assert image_exists(image)
    assert not image_exists("qwq-agent-sandbox:0000000000000000")
    attrs = client.images.get(image).attrs
    assert attrs["Config"]["Labels"][LABEL] == "1"
    assert attrs["Config"]["Labels"][HASH_LABEL] == image.split(":", 1)[1]
    assert attrs["Config"]["Entrypoint"] == ENTRYPOINT
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["WorkingDir"] == "/workspace"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["MPLBACKEND"] == "Agg"
    assert env["LANG"] == "C.UTF-8"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/home/sandbox"


@pytest.mark.docker
def test_second_ensure_is_a_noop(image: str) -> None:
    result = build_image(progress=lambda _line: None)
    assert result.tag == image
    assert result.built is False
    assert result.size_bytes > 0


@pytest.mark.docker
def test_scientific_python_stack(client, image: str) -> None:
    script = """
import json, os
import numpy, pandas, scipy, scipy.linalg, sympy, IPython, ipykernel
import matplotlib
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot(numpy.arange(5), pandas.Series([1, 4, 9, 16, 25]))
path = "/tmp/plot.png"
fig.savefig(path)
with open(path, "rb") as fh:
    magic = fh.read(8)
print(json.dumps({
    "backend": matplotlib.get_backend(),
    "png": magic == b"\\x89PNG\\r\\n\\x1a\\n",
    "det": float(scipy.linalg.det(numpy.eye(3) * 2)),
    "sym": str(sympy.expand((sympy.Symbol("x") + 1) ** 2)),
}))
"""
    code, out = run_in(client, image, ["python3", "-c", script])
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["backend"].lower() == "agg"
    assert result["png"] is True
    assert result["det"] == pytest.approx(8.0)
    assert result["sym"] == "x**2 + 2*x + 1"


@pytest.mark.docker
def test_matplotlib_defaults_to_agg_without_env(client, image: str) -> None:
    code, out = run_in(
        client,
        image,
        ["env", "-u", "MPLBACKEND", "python3", "-c", "import matplotlib; print(matplotlib.get_backend())"],
    )
    assert code == 0, out
    assert out.strip().lower() == "agg"


@pytest.mark.docker
def test_tools_run(client, image: str) -> None:
    code, out = run_in(
        client,
        image,
        ["bash", "-c", "set -e; rg --version; git --version; ps --version; /usr/bin/tini --version"],
    )
    assert code == 0, out
    assert "ripgrep" in out
    assert "git version" in out
    assert "tini version" in out


@pytest.mark.docker
def test_default_user_and_workspace(client, image: str) -> None:
    code, out = run_in(client, image, ["bash", "-c", 'id -u; id -g; pwd; echo "$HOME"; touch ok && echo w'])
    assert code == 0, out
    assert out.split() == ["1000", "1000", "/workspace", "/home/sandbox", "w"]


@pytest.mark.docker
def test_no_apt_lists_or_package_cache(client, image: str) -> None:
    # As root to see into apt's private partial/ directory; apt's empty lock file may stay.
    argv = [
        "find",
        "/var/lib/apt/lists",
        "/var/cache/apt",
        "-mindepth",
        "1",
        "!",
        "-name",
        "lock",
        "!",
        "-name",
        "partial",
    ]
    code, out = run_in(client, image, argv, user="0")
    assert code == 0, out
    assert out.strip() == ""
    code, out = run_in(
        client,
        image,
        ["find", "/var/cache/apt", "/var/lib/apt/lists", "-name", "*.deb", "-o", "-name", "*_Packages*"],
        user="0",
    )
    assert code == 0, out
    assert out.strip() == ""


@pytest.mark.docker
def test_supervisor_is_the_repo_file(client, image: str) -> None:
    code, out = run_in(client, image, ["stat", "-c", "%a %U", "/opt/qwq/supervisor/boot.py"])
    assert code == 0, out
    mode, owner = out.split()
    assert int(mode, 8) & 0o444 == 0o444
    assert owner == "root"
    if SUPERVISOR_PATH.is_dir():
        for source in sorted(SUPERVISOR_PATH.glob("*.py")):
            code, out = run_in(client, image, ["cat", f"/opt/qwq/supervisor/{source.name}"])
            assert code == 0
            assert out == source.read_text()
