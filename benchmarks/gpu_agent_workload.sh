#!/usr/bin/env bash
# Issue 6 on the lent GPU (see ../shared/device/README.md), one phase per device call:
#   start-a   install SGLang (wheels already copied to /tmp/sglang-a), start a radix-cache server, run 1 and 2
#   over      configuration 5: more sessions than the KV cache holds, admission control off then on
#   radix-off restart the server with --disable-radix-cache, run 3
#   hf        stop SGLang, run the transformers batch-1 baseline (4)
#   h100      on an H100: start a server with its own KV capacity, run 1 and 5
#   gpu       start a server as tests/test_gpu_sglang.py expects (unless one runs) and run that suite
# First, on your own machine: scripts/prepare-gpu.sh (writes .device/, says what each call carries). Then
# one call carrying .device/sglang/a runs `mkdir -p /tmp/sglang-a && cp .device/sglang/a/*.whl /tmp/sglang-a/`,
# and each phase's call carries .device/sglang/b .device/qwq-32b .device/wheels.
# Results go to $OUT/aw-<phase>.json (phase gpu: $OUT/gpu-suite.txt and $OUT/gpu-observations.json).
set -u
phase=${1:?phase}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ ! -d .device/wheels ]; then echo "no .device/wheels: run scripts/prepare-gpu.sh first and carry it"; exit 1; fi
if [ ! -d /tmp/extra/rich ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/extra .device/wheels/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:/tmp/extra:$PWD
# KV capped at 40k tokens: configurations 1-3 (8 sessions, ~32k tokens) fit, and 32 sessions of ~4-6k
# tokens overload it 3.6 times, so configuration 5 needs no more sessions than the H100 run did.
FLAGS="--enable-metrics --enable-cache-report --context-length 16384 --max-total-tokens 40000"
bench() { python3 benchmarks/agent_workload.py --out "$OUT/aw-$phase.json" --server-flags "$SERVER_FLAGS" "$@"; }
common="--sessions 8 --turns 6 --gen-tokens 200 --obs-words 150"
over="--sessions 32 --turns 4 --gen-tokens 100 --obs-words 300 --task-words 2000 --reserve-tokens 5000"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
case "$phase" in
  start-a)
    SERVER_FLAGS="--schedule-policy lpm $FLAGS"
    bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    bench --label "radix-lpm-drop-reasoning" $common
    bench --label "radix-lpm-keep-reasoning" $common --keep-reasoning
    ;;
  over)
    SERVER_FLAGS="--schedule-policy lpm $FLAGS"
    bench --label "over-capacity-admission-off" $over
    bench --label "over-capacity-admission-on" $over --admission
    ;;
  radix-off)
    kill "$(cat /tmp/sglang.pid)"; while kill -0 "$(cat /tmp/sglang.pid)" 2>/dev/null; do sleep 1; done
    SERVER_FLAGS="--disable-radix-cache $FLAGS"
    bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    bench --label "radix-off" $common
    ;;
  h100)
    # The H100's own KV capacity (no cap): the over-capacity test as the H100 run that thrashed.
    SERVER_FLAGS="--schedule-policy lpm --enable-metrics --enable-cache-report --context-length 16384"
    bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    bench --label "h100-radix-lpm-drop-reasoning" $common
    bench --label "h100-over-capacity-admission-on" $over --admission
    bench --label "h100-over-capacity-admission-off" $over
    ;;
  gpu)
    # The suite's server: tool-call and reasoning parsers for the OpenAI API, cache reports in usage.
    SERVER_FLAGS="--schedule-policy lpm --enable-cache-report --reasoning-parser deepseek-r1 --tool-call-parser qwen25 --context-length 16384"
    if ! curl -s -o /dev/null http://127.0.0.1:30000/health; then
      bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    fi
    QWQ_SGLANG_URL=http://127.0.0.1:30000 QWQ_GPU_OBSERVATIONS="$OUT/gpu-observations.json" \
      python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_gpu_sglang.py 2>&1 | tee "$OUT/gpu-suite.txt"
    rc=${PIPESTATUS[0]}
    ;;
  hf)
    if [ -f /tmp/sglang.pid ]; then
      kill "$(cat /tmp/sglang.pid)"; while kill -0 "$(cat /tmp/sglang.pid)" 2>/dev/null; do sleep 1; done
    fi
    SERVER_FLAGS="transformers generate, batch 1"
    bench --label "transformers-batch1" --transformers .device/qwq-32b --sessions 1 --turns 6 --gen-tokens 200 --obs-words 150
    ;;
esac
cp /tmp/sglang.log "$OUT/sglang-$phase.log" 2>/dev/null || true
exit "${rc:-0}"
