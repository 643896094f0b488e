#!/usr/bin/env bash
# Issue 6 on the lent GPU (see ../shared/device/README.md), one phase per device call:
#   start-a   install SGLang (wheels already copied to /tmp/sglang-a), start a radix-cache server, run 1 and 2
#   over      configuration 5: more sessions than the KV cache holds, admission control off then on
#   radix-off restart the server with --disable-radix-cache, run 3
#   hf        stop SGLang, run the transformers batch-1 baseline (4)
#   h100      on an H100: start a server with its own KV capacity, run 1 and 5
#   gpu       start a server as tests/test_gpu_sglang.py expects (unless one runs) and run that suite
#   exact     issue 16: start a radix-cache server (unless one runs), run the workload with reasoning dropped,
#             kept as text, kept as the server's ids; $OUT/aw-exact.json is
#             benchmarks/results/exact_tokens-<date>.json. Validate it here first against the scripted server:
#               .venv/bin/python -m qwq_agent.testing.scripted_server --port 30777 --random-tokens 200 &
#               OUT=/tmp/aw AW_URL=http://127.0.0.1:30777 AW_PYTHON=.venv/bin/python AW_NO_INSTALL=1 \
#                 bash benchmarks/gpu_agent_workload.sh exact
#   branches-probe  issue 16's branches (model side, --no-sandbox) and issue 12's probe cost; leaves the
#             server up as phase gpu expects, so `gpu` can follow on the warm machine
#   scale-out (nvidia-h200-x2) one SGLang replica per GPU, then benchmarks/scale_out.py: (a) one GPU alone,
#             (b)-(d) both behind SGLang's router round-robin, cache-aware, with session affinity; 64
#             sessions x 6 turns; budgeted for one 10-minute call (install ~30 s, both replicas start in
#             parallel ~150 s, four configurations ~60-90 s each)
#   router-check (nvidia-h200) the scale-out rehearsal on one GPU: one replica, alone and then behind
#             SGLang's router with each policy (scale_out.py --router-check), same calls as scale-out
# First, on your own machine: scripts/prepare-gpu.sh (writes .device/, says what each call carries). Then
# one call carrying .device/sglang/a runs `mkdir -p /tmp/sglang-a && cp .device/sglang/a/*.whl /tmp/sglang-a/`,
# and each phase's call carries .device/sglang/b .device/qwq-32b .device/wheels.
# Results go to $OUT/aw-<phase>.json (phase gpu: $OUT/gpu-suite.txt and $OUT/gpu-observations.json).
# Phase scale-out, on nvidia-h200-x2, each call within 30 s of the last:
#   1. carry .device/sglang/a: mkdir -p /tmp/sglang-a && cp .device/sglang/a/*.whl /tmp/sglang-a/
#   2. carry .device/router:   mkdir -p /tmp/router && cp .device/router/*.whl /tmp/router/
#   3. carry .device/sglang/b .device/qwq-32b .device/wheels: bash benchmarks/gpu_agent_workload.sh scale-out
# It writes $OUT/scale_out-DATE.json; copy it to benchmarks/results/ and chart it here with
# `python benchmarks/scale_out.py --plot benchmarks/results/scale_out-DATE.json` (no matplotlib there).
set -u
phase=${1:?phase}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# AW_URL, AW_PYTHON and AW_NO_INSTALL let a phase run here, against the scripted server (see `exact`).
URL=${AW_URL:-http://127.0.0.1:30000}
PY=${AW_PYTHON:-python3}
mkdir -p "$OUT"
if [ -z "${AW_NO_INSTALL:-}" ]; then
  if [ ! -d .device/wheels ]; then echo "no .device/wheels: run scripts/prepare-gpu.sh first and carry it"; exit 1; fi
  if [ ! -d /tmp/extra/rich ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/extra .device/wheels/*.whl || exit 1
  fi
fi
export PYTHONPATH=/tmp/site:/tmp/extra:$PWD
# KV capped at 40k tokens: configurations 1-3 (8 sessions, ~32k tokens) fit, and 32 sessions of ~4-6k
# tokens overload it 3.6 times, so configuration 5 needs no more sessions than the H100 run did.
FLAGS="--enable-metrics --enable-cache-report --context-length 16384 --max-total-tokens 40000"
bench() { "$PY" benchmarks/agent_workload.py --url "$URL" --out "$OUT/aw-$phase.json" --server-flags "$SERVER_FLAGS" "$@"; }
common="--sessions 8 --turns 6 --gen-tokens 200 --obs-words 150"
over="--sessions 32 --turns 4 --gen-tokens 100 --obs-words 300 --task-words 2000 --reserve-tokens 5000"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
# SGLang's router, from the wheels call 2 of the header copied to /tmp/router (phases scale-out, router-check).
install_router() {
  if [ ! -d /tmp/router-site/sglang_router ]; then
    ls /tmp/router/sglang_router-*.whl >/dev/null 2>&1 || { echo "no /tmp/router: run call 2 of the header first"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/router-site /tmp/router/*.whl || exit 1
  fi
  export PYTHONPATH=$PYTHONPATH:/tmp/router-site
}
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
  exact)
    # Issue 16: the same workload three ways; the target is uncached == new tokens (within 2) when kept as ids.
    SERVER_FLAGS="--schedule-policy lpm $FLAGS"
    if ! curl -s -o /dev/null "$URL/health"; then
      bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    fi
    bench --label "drop-reasoning" $common || rc=1
    bench --label "keep-reasoning-as-text" $common --keep-reasoning --text-prompts || rc=1
    bench --label "keep-reasoning-as-ids" $common --keep-reasoning || rc=1
    ;;
  router-check)
    install_router
    SERVER_FLAGS="--schedule-policy lpm --enable-metrics --enable-cache-report --context-length 16384"
    bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS > "$OUT/up-0.txt" 2>&1 || { tail -n 40 "$OUT/up-0.txt"; exit 1; }
    python3 benchmarks/scale_out.py --worker-urls http://127.0.0.1:30000 --router-check \
      --tokenizer-path .device/qwq-32b --sessions 64 --turns 6 --gen-tokens 100 --out "$OUT/router_check-$(date +%F).json"
    rc=$?
    ;;
  scale-out)
    install_router
    SERVER_FLAGS="--schedule-policy lpm --enable-metrics --enable-cache-report --context-length 16384"
    rm -f /tmp/sglang.pid
    # Replica 0 through sglang-up.sh (it installs SGLang first, then writes its pid); replica 1 starts as
    # soon as that pid exists, so both load and capture CUDA graphs at the same time.
    CUDA_VISIBLE_DEVICES=0 bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS > "$OUT/up-0.txt" 2>&1 &
    up=$!
    for _ in $(seq 1 300); do [ -s /tmp/sglang.pid ] && break; kill -0 "$up" 2>/dev/null || break; sleep 1; done
    CUDA_VISIBLE_DEVICES=1 PYTHONPATH=/tmp/site:$PYTHONPATH setsid python3 -m sglang.launch_server \
      --model-path .device/qwq-32b --load-format dummy --attention-backend triton --sampling-backend pytorch \
      --host 127.0.0.1 --port 30001 $SERVER_FLAGS > /tmp/sglang-1.log 2>&1 < /dev/null &
    echo $! > /tmp/sglang-1.pid
    wait "$up" || { cat "$OUT/up-0.txt"; tail -n 20 /tmp/sglang-1.log; exit 1; }
    ok=0
    for _ in $(seq 1 150); do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:30001/health)" = 200 ]; then ok=1; break; fi
      kill -0 "$(cat /tmp/sglang-1.pid)" 2>/dev/null || break
      sleep 2
    done
    [ "$ok" = 1 ] || { echo "replica 1 not ready"; tail -n 40 /tmp/sglang-1.log; exit 1; }
    python3 benchmarks/scale_out.py --worker-urls http://127.0.0.1:30000 http://127.0.0.1:30001 \
      --tokenizer-path .device/qwq-32b --sessions 64 --turns 6 --gen-tokens 100 --out "$OUT/scale_out-$(date +%F).json"
    rc=$?
    cp /tmp/sglang-1.log "$OUT/sglang-scale-out-1.log" 2>/dev/null
    ;;
  branches-probe)
    # Issues 16 and 12 on one GPU: parallel branches vs independent runs (the model side: no Docker on the
    # lent machine, so --no-sandbox; the sandbox side is measured on the Docker host), then the loop
    # detector's answer-stability probe cost. The server is started as phase gpu expects, so `gpu` can
    # follow in the next call on the warm machine.
    SERVER_FLAGS="--schedule-policy lpm --enable-cache-report --reasoning-parser deepseek-r1 --tool-call-parser qwen25 --context-length 16384"
    if ! curl -s -o /dev/null "$URL/health"; then
      bash .device/sglang/b/sglang-up.sh .device/qwq-32b $SERVER_FLAGS || exit 1
    fi
    "$PY" benchmarks/branches_bench.py --url "$URL" --no-sandbox --flush-cache --label-suffix h200 \
      --out "$OUT/branches-$(date +%F).json" || rc=1
    "$PY" benchmarks/probe_cost.py --url "$URL" --max-new-tokens 2048 --out "$OUT/probe_cost.json" || rc=1
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
