#!/usr/bin/env bash
# Prepare everything a GPU machine without a package index needs, in carry-sized folders under .device/:
#   .device/sglang/a   SGLang 0.5.17's wheel set, part 1 (from ../shared/device/prepare-sglang.py)
#   .device/sglang/b   part 2 (the trimmed kernel wheels) and sglang-up.sh
#   .device/wheels     qwq-agent's own dependencies and the test runner, for CPython 3.12 on x86_64 Linux
#   .device/qwq-32b    QwQ-32B's config.json, tokenizer and generation defaults (from ../shared/qwq-32b)
#   .device/router     SGLang's router (sglang-router 0.3.2, one abi3 wheel of ~30 MB) and aiohttp, which its
#                      launcher imports; SGLang's own set already has fastapi, uvicorn, orjson, setproctitle
# It prints each folder's size and which device call carries which (at most 64 MiB travel with one call).
# Run on your own machine, in the project's root; re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${QWQ_SHARED:-../shared}
PY=${PYTHON:-python3}
mkdir -p .device
# In a git worktree .git is a file: ask git where this checkout's exclude file is.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"

if [ ! -d .device/sglang/a ] || [ ! -d .device/sglang/b ]; then
  [ -f "$shared/device/prepare-sglang.py" ] || { echo "prepare-gpu: $shared/device/prepare-sglang.py not found (set QWQ_SHARED)"; exit 1; }
  # prepare-sglang.py writes .git/info/exclude under its working directory, which fails in a worktree
  # (.git is a file there): run it in a scratch folder and move its .device/sglang here.
  scratch=$(mktemp -d)
  shared_abs=$(cd "$shared" && pwd)
  (cd "$scratch" && "$PY" "$shared_abs/device/prepare-sglang.py")
  rm -rf .device/sglang && mv "$scratch/.device/sglang" .device/sglang && rm -rf "$scratch"
fi

if [ ! -f .device/wheels/.done ]; then
  rm -rf .device/wheels && mkdir -p .device/wheels
  # The project's runtime dependencies as pyproject.toml names them, plus what the GPU suite runs with.
  mapfile -t deps < <("$PY" - <<'EOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
EOF
)
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels "${deps[@]}" "pytest>=8" "pytest-asyncio>=0.23"
  # SGLang's own set already brings these (same names, pinned): keep its versions, carry less.
  for w in .device/sglang/a/*.whl; do
    name=$(basename "$w" | cut -d- -f1)
    rm -f .device/wheels/"$name"-*.whl
  done
  # QwQ's tokenizer (the `tokenizer` extra) for the benchmarks: tiktoken is on the GPU machine already,
  # dashscope only carries the vocabulary file (the tokenizer never imports it), so its own deps stay here.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any \
    -d .device/wheels "dashscope>=1.20"
  # The GPU machine has numpy already (../shared/device/README.md): carrying it would pass 64 MiB.
  rm -f .device/wheels/numpy-*.whl
  touch .device/wheels/.done
fi

if [ ! -f .device/router/.done ]; then
  rm -rf .device/router && mkdir -p .device/router
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi abi3 --platform manylinux2014_x86_64 -d .device/router "sglang-router==0.3.2"
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/router aiohttp
  for w in .device/sglang/a/*.whl .device/wheels/*.whl; do  # carried already: keep one copy
    name=$(basename "$w" | cut -d- -f1)
    rm -f .device/router/"$name"-*.whl
  done
  touch .device/router/.done
fi

if [ ! -f .device/qwq-32b/config.json ]; then
  [ -d "$shared/qwq-32b" ] || { echo "prepare-gpu: $shared/qwq-32b not found (set QWQ_SHARED)"; exit 1; }
  mkdir -p .device/qwq-32b && cp "$shared"/qwq-32b/*.json "$shared"/qwq-32b/*.txt .device/qwq-32b/
fi

size() { du -sm "$@" | awk '{s += $1} END {print s}'; }
tree=$(git ls-files -z | du -cm --files0-from=- | tail -1 | cut -f1)
a=$(size .device/sglang/a); b=$(size .device/sglang/b); w=$(size .device/wheels); m=$(size .device/qwq-32b)
r=$(size .device/router)
echo "prepared (MiB): sglang/a $a, sglang/b $b, wheels $w, qwq-32b $m, router $r; the working tree itself ${tree}"
echo "device call 1 carries .device/sglang/a: $((a + tree)) MiB of 64"
echo "  (phase scale-out only) a call carrying .device/router: $((r + tree)) MiB of 64"
echo "device call 2 carries .device/sglang/b .device/qwq-32b .device/wheels: $((b + m + w + tree)) MiB of 64"
if [ $((a + tree)) -gt 64 ] || [ $((b + m + w + tree)) -gt 64 ] || [ $((r + tree)) -gt 64 ]; then
  echo "prepare-gpu: a call would carry more than 64 MiB"; exit 1
fi
echo "then: benchmarks/gpu_agent_workload.sh <phase> (see its header), e.g. phase gpu runs the GPU test suite"
