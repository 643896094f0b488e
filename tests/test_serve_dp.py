"""`qwq-agent serve --dp N`, session affinity and fleet admission, against SGLang's real router.

The router is the real `sglang-router` binary (`python -m sglang_router.launch_router`); the workers are
scripted model servers (real HTTP on 127.0.0.1, SGLang's `/generate`, `/health`, `/server_info`), as
processes (started by `serve --dp` through a `--command` template) or in this process (so a test can
count which worker served which request). The workers report a local, empty model folder so the router
looks for no tokenizer on a model hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.agent.admission import KVAdmission, PerWorkerAdmission
from qwq_agent.agent.clients import ModelServerError, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.routing import ROUTING_KEY_HEADER, routing_headers
from qwq_agent.agent.messages import Message
from qwq_agent.cli.main import main
from qwq_agent.protocols import SamplingParams
from qwq_agent.serve import ServerExited, ServerProcess, ServerStartTimeout, probe
from qwq_agent.serve.fleet import (
    Fleet,
    FleetConfig,
    probe_router,
    router_command,
    router_policy_args,
    wait_router,
    worker_specs,
)
from qwq_agent.serve.launcher import ServeConfig
from qwq_agent.testing.scripted_server import ScriptedModelServer

pytest.importorskip("sglang_router", reason="sglang-router is not installed (pip install -e '.[router]')")

SCRIPTED = f"{sys.executable} -m qwq_agent.testing.scripted_server"
ANSWER = "thinking\n</think>\n\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """A base port with `n` free ports above it (checked now; the tests bind them moments later)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65535 and all(_free(base + i) for i in range(1, n + 1)):
            return base
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sigint_as_a_terminal_sends_it() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Router:
    """The real router in front of in-process scripted servers."""

    def __init__(self, servers: list[ScriptedModelServer], policy: str, log_dir: Path) -> None:
        self.servers = servers
        self.config = FleetConfig(dp=len(servers), router_port=free_port(), policy=policy)
        self.process = ServerProcess(
            router_command(self.config, [s.url for s in servers]),
            self.config.router_url,
            log_dir / "router.log",
        )

    def __enter__(self) -> Router:
        self.process.start()
        try:
            wait_router(self.process, len(self.servers), timeout=60)
        except BaseException:
            self.process.stop(5)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop(5)

    @property
    def url(self) -> str:
        return self.config.router_url

    def workers_of(self, tag: str) -> set[int]:
        """Indexes of the servers that received a request whose prompt contains `tag`."""
        return {
            i for i, s in enumerate(self.servers) if any(tag in (r.prompt or "") for r in list(s.requests))
        }


def scripted(tmp_path: Path, capacity: int = 18391) -> ScriptedModelServer:
    return ScriptedModelServer(
        lambda r: ANSWER, when_exhausted="repeat", max_total_num_tokens=capacity, model=str(tmp_path)
    )


# ----- commands ------------------------------------------------------------------------------------


def test_worker_commands_get_one_gpu_and_port_each_and_the_router_fronts_them():
    fleet = FleetConfig(dp=2, router_port=31000, policy="affinity", tokenizer_path="/models/qwq")
    specs = worker_specs(ServeConfig(model_path="/models/qwq", extra_args=["--load-format", "dummy"]), fleet)
    assert [(s.gpu, s.url, s.env["CUDA_VISIBLE_DEVICES"]) for s in specs] == [
        ("0", "http://127.0.0.1:31001", "0"),
        ("1", "http://127.0.0.1:31002", "1"),
    ]
    assert "--port 31002" in " ".join(specs[1].command) and specs[1].command[-2:] == [
        "--load-format",
        "dummy",
    ]
    router = " ".join(router_command(fleet, [s.url for s in specs]))
    assert "sglang_router.launch_router --worker-urls http://127.0.0.1:31001 http://127.0.0.1:31002" in router
    assert "--policy manual --assignment-mode min_group" in router and "--port 31000" in router
    assert "--tokenizer-path /models/qwq" in router
    assert router_policy_args("round_robin") == ["--policy", "round_robin"]
    with pytest.raises(ValueError, match="unknown router policy"):
        FleetConfig(dp=2, policy="sticky")
    with pytest.raises(ValueError, match="2 GPUs named for 3 replicas"):
        FleetConfig(dp=3, gpus=["0", "1"])


def test_print_command_shows_every_worker_and_the_router(capsys):
    assert main(["serve", "--dp", "2", "--port", "31100", "--gpus", "2,3", "--print-command"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CUDA_VISIBLE_DEVICES=2 ") and "--port 31101" in out[0]
    assert out[1].startswith("CUDA_VISIBLE_DEVICES=3 ") and "--port 31102" in out[1]
    assert "sglang_router.launch_router" in out[2] and "--policy cache_aware" in out[2]


def test_routing_key_header_is_checked():
    assert routing_headers(None) == {}
    assert routing_headers("run-1") == {ROUTING_KEY_HEADER: "run-1"}
    for bad in ("", "a\r\nx-evil: 1", "k" * 257):
        with pytest.raises(ValueError, match="routing key"):
            routing_headers(bad)


# ----- serve --dp: processes, waiting, printing ----------------------------------------------------


def test_cli_serve_dp_waits_for_all_prints_capacities_and_stops_everything(tmp_path):
    base = free_ports(2)
    template = f"{SCRIPTED} --port {{port}} --max-total-num-tokens 1{{gpu}}000 --model {tmp_path}"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwq_agent.cli.main",
            "serve",
            "--dp",
            "2",
            "--port",
            str(base),
            "--command",
            template,
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    try:
        lines = []
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        out = "".join(lines)
        if "Ctrl-C stops" not in out:  # it ended early: show why
            cli.wait(timeout=30)
            assert cli.stderr is not None
            pytest.fail(out + cli.stderr.read())
        assert f"ready: http://127.0.0.1:{base} (router, policy cache_aware)" in out, out
        assert f"worker 0: http://127.0.0.1:{base + 1} healthy, KV capacity: 10000 tokens" in out
        assert f"worker 1: http://127.0.0.1:{base + 2} healthy, KV capacity: 11000 tokens" in out
        assert "total KV capacity: 21000 tokens over 2 workers" in out
        pids = [int(p) for p in next(ln for ln in lines if ln.startswith("pids: ")).split()[1:]]
        pids.append(int(next(ln for ln in lines if ln.startswith("router pid: ")).split()[2]))
        # the router serves: a request through it is answered by a worker
        info = probe_router(f"http://127.0.0.1:{base}")
        assert info is not None and info.total_kv_tokens == 21000
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:  # SIGINT first: the CLI stops its router and workers; a kill would orphan them
            cli.send_signal(signal.SIGINT)
            try:
                cli.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.wait()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert probe(f"http://127.0.0.1:{base + 1}", timeout=1) is None


def test_a_worker_that_exits_before_ready_is_named_with_its_log(tmp_path):
    base = free_ports(3)
    template = f"{SCRIPTED} --port {{port}} --model {tmp_path} --unready-for 100 --exit-after 0.5"
    fleet_config = FleetConfig(dp=2, router_port=base)
    fleet = Fleet(fleet_config, worker_specs(ServeConfig(), fleet_config, template), tmp_path / "logs")
    fleet.start_workers()
    try:
        with pytest.raises(
            ServerExited, match=r"worker 0 \(http://127.0.0.1:\d+, GPU 0\) exited with status 3"
        ):
            fleet.wait_ready(timeout=60, poll_interval=0.2)
        assert not fleet.router.alive()  # the router is never started in front of a broken fleet
    finally:
        fleet.stop(5)
    assert "crashing on purpose" in (tmp_path / "logs" / "worker-0.log").read_text()


def test_a_worker_that_never_gets_ready_times_out_naming_it(tmp_path):
    base = free_ports(3)
    fast = f"{SCRIPTED} --port {{port}} --model {tmp_path}"
    fleet_config = FleetConfig(dp=2, router_port=base)
    specs = worker_specs(ServeConfig(), fleet_config, fast)
    specs[1].command += ["--unready-for", "100"]
    fleet = Fleet(fleet_config, specs, tmp_path / "logs")
    fleet.start_workers()
    progress: list[str] = []
    try:
        with pytest.raises(
            ServerStartTimeout, match=rf"worker 1 \(http://127.0.0.1:{base + 2}\) did not answer"
        ):
            fleet.wait_ready(timeout=3, poll_interval=0.2, on_progress=progress.append)
    finally:
        fleet.stop(5)
    assert progress == [f"worker 0 ready: http://127.0.0.1:{base + 1}"]


# ----- affinity, failures and admission through the real router ------------------------------------


async def run_sessions(client: SGLangClient, sessions: int, turns: int, *, keyed: bool) -> None:
    async def session(i: int) -> None:
        c = client.with_routing_key(f"run-{i}") if keyed else client
        for t in range(turns):
            await c.generate(f"<session {i}> turn {t}", SamplingParams(max_new_tokens=4))

    await asyncio.gather(*(session(i) for i in range(sessions)))


async def test_with_affinity_each_sessions_requests_land_on_one_worker(tmp_path):
    servers = [scripted(tmp_path) for _ in range(3)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            async with SGLangClient(router.url) as client:
                await run_sessions(client, sessions=9, turns=4, keyed=True)
            placements = [router.workers_of(f"<session {i}>") for i in range(9)]
            assert all(len(p) == 1 for p in placements), placements
            # new keys are spread over the workers, not all pinned to one
            assert len(set().union(*placements)) >= 2
            assert all(r.headers.get(ROUTING_KEY_HEADER, "").startswith("run-") for r in servers[0].requests)
    finally:
        for s in servers:
            s.__exit__()


async def test_round_robin_without_a_key_spreads_a_session(tmp_path):
    """The contrast that makes the affinity test meaningful: without affinity a session moves."""
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "round_robin", tmp_path) as router:
            async with SGLangClient(router.url) as client:
                await run_sessions(client, sessions=1, turns=4, keyed=False)
            assert router.workers_of("<session 0>") == {0, 1}
    finally:
        for s in servers:
            s.__exit__()


async def test_openai_client_sends_the_routing_key_through_the_router(tmp_path):
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            async with OpenAIChatClient(router.url, model=str(tmp_path)) as client:
                keyed = client.with_routing_key("chat-run")
                for t in range(4):
                    messages = [Message(role="user", content=f"<chat> turn {t}")]
                    async for _ in keyed.stream(messages, [], SamplingParams(max_new_tokens=4)):
                        pass
            assert len(router.workers_of("<chat>")) == 1
            seen = [r.headers.get(ROUTING_KEY_HEADER) for s in servers for r in s.requests]
            assert seen == ["chat-run"] * 4
    finally:
        for s in servers:
            s.__exit__()


async def test_a_dead_worker_is_routed_around_and_all_dead_is_a_clear_error(tmp_path):
    servers = [scripted(tmp_path) for _ in range(3)]
    for s in servers:
        s.__enter__()
    try:
        await _dead_worker_checks(servers, tmp_path)
    finally:
        for s in servers:
            s.__exit__()  # a second exit is a no-op


async def _dead_worker_checks(servers: list[ScriptedModelServer], tmp_path: Path) -> None:
    with Router(servers, "affinity", tmp_path) as router:
        async with SGLangClient(router.url) as client:
            await run_sessions(client, sessions=6, turns=1, keyed=True)
            victim = next(i for i, s in enumerate(servers) if s.requests)
            pinned = [i for i in range(6) if router.workers_of(f"<session {i}>") == {victim}]
            servers[victim].__exit__()
            # every session, those pinned to the dead worker included, still gets its turns
            await run_sessions(client, sessions=6, turns=2, keyed=True)
            for i in pinned:
                assert len(router.workers_of(f"<session {i}>") - {victim}) == 1
            for i, s in enumerate(servers):
                if i != victim:
                    s.__exit__()
            with pytest.raises(ModelServerError, match=r"503.*[Nn]o available workers") as err:
                await client.with_routing_key("late").generate("x", SamplingParams(max_new_tokens=2))
            assert err.value.status_code == 503


async def test_admission_sizes_itself_from_the_workers_capacities(tmp_path):
    servers = [scripted(tmp_path, capacity) for capacity in (1000, 2000, 3000)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "cache_aware", tmp_path) as router:
            info = probe_router(router.url)
            async with SGLangClient(router.url) as client:  # what the agent loop and benchmarks ask
                seen = await client.server_info()
    finally:
        for s in servers:
            s.__exit__()
    assert info is not None
    assert sorted(info.capacities) == [1000, 2000, 3000] and info.total_kv_tokens == 6000
    assert seen.max_total_num_tokens == 6000 and seen.context_length == 16384
    assert seen.worker_capacities == {s.url: c for s, c in zip(servers, (1000, 2000, 3000), strict=True)}
    assert seen.model_path == str(tmp_path)
    admission = KVAdmission.for_workers(info.capacities, headroom=0.5)
    assert admission.capacity == 3000
    with pytest.raises(ValueError, match="no worker reported"):
        KVAdmission.for_workers([0])


async def test_per_worker_admission_keeps_a_key_on_its_worker_and_fills_each_worker():
    admission = PerWorkerAdmission({"http://a": 1000, "http://b": 500}, headroom=1.0)
    assert admission.capacity == 1500
    async with admission.reserve(600, key="run-1"):
        assert admission.worker_of("run-1") == "http://a"  # the freest worker
        async with admission.reserve(300, key="run-2"):
            assert admission.worker_of("run-2") == "http://b"  # b (500 free) is now freer than a (400)
            # run-2 stays on b while it holds a reservation there: this one waits, though a has room
            blocked = asyncio.create_task(_reserve(admission, 300, "run-2"))
            await asyncio.sleep(0)
            assert not blocked.done() and admission.workers["http://b"].waiting == 1
            assert admission.workers["http://a"].in_use == 600
        await asyncio.wait_for(blocked, 5)  # b's release lets it in
    assert all(a.in_use == 0 for a in admission.workers.values())
    assert admission.worker_of("run-3") == "http://a"  # an idle key is free to move


async def _reserve(admission: PerWorkerAdmission, tokens: int, key: str) -> None:
    async with admission.reserve(tokens, key=key):
        pass


def test_scale_out_benchmark_runs_every_configuration_on_scripted_workers(tmp_path):
    """benchmarks/scale_out.py end to end, small: scripted workers behind the real router."""
    out = tmp_path / "scale_out.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "scale_out.py"
    # one session: round-robin then alternates its turns between the workers, deterministically
    sizes = "--sessions 1 --turns 3 --gen-tokens 10 --system-words 100 --task-words 50 --obs-words 30"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--scripted",
            "2",
            "--router-port",
            str(free_port()),
            *sizes.split(),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [(r["label"], r["gpus"], r["policy"]) for r in rows] == [
        ("a-one-gpu", 1, "none"),
        ("b-two-round-robin", 2, "round_robin"),
        ("c-two-cache-aware", 2, "cache_aware"),
        ("d-two-affinity", 2, "affinity"),
    ]
    keys = {
        "sessions",
        "turns",
        "generated_tok_s",
        "cached_share_turn2plus",
        "ttft_p50_s",
        "ttft_p90_s",
        "wall_s",
    }
    assert all(keys <= set(r) and r["statuses"] == {"completed": 1} for r in rows)
    by = {r["policy"]: r for r in rows}
    # a session that stays on its worker finds its prefix there; round-robin moves it every turn
    assert by["affinity"]["cached_share_turn2plus"] > by["round_robin"]["cached_share_turn2plus"]
    assert by["affinity"]["cached_share_turn2plus"] == pytest.approx(by["none"]["cached_share_turn2plus"])
    assert out.with_suffix(".png").stat().st_size > 0 and "best two-GPU" in done.stdout


@pytest.mark.parametrize("api", ["native", "openai"])
def test_cli_run_through_the_router_sends_its_run_id_as_routing_key(tmp_path, api):
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qwq_agent.cli.main",
                    "run",
                    "--model-url",
                    router.url,
                    "--api",
                    api,
                    "--model",
                    str(tmp_path),
                    "What is 2+2?",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
    finally:
        for s in servers:
            s.__exit__()
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = next((tmp_path / "traces").glob("*.jsonl")).stem
    model_calls = [r for s in servers for r in s.requests]
    assert model_calls and all(r.headers.get(ROUTING_KEY_HEADER) == run_id for r in model_calls)


def test_model_url_of_a_router_reports_its_workers(tmp_path, capsys):
    servers = [scripted(tmp_path, capacity) for capacity in (1000, 3000)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "cache_aware", tmp_path) as router:
            assert main(["serve", "--model-url", router.url]) == 0
            out = capsys.readouterr().out
            servers[0].__exit__()
            after_stop = probe_router(router.url)
    finally:
        for s in servers:
            s.__exit__()
    assert f"ready: {router.url} (router)" in out
    assert (
        f"worker 0: {servers[0].url} healthy, KV capacity: 1000 tokens" in out or "KV capacity: 1000" in out
    )
    assert "total KV capacity: 4000 tokens over 2 workers" in out
    # a stopped worker is reported unhealthy, and its capacity leaves the total
    assert after_stop is not None and after_stop.total_kv_tokens == 3000


def test_a_router_that_cannot_start_is_a_clear_error_and_the_workers_are_stopped(tmp_path):
    base = free_ports(3)
    template = f"{SCRIPTED} --port {{port}} --model {tmp_path}"
    with socket.socket() as taken:  # the router's port is taken: the router exits
        taken.bind(("127.0.0.1", base))
        taken.listen()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "qwq_agent.cli.main",
                "serve",
                "--dp",
                "2",
                "--port",
                str(base),
                "--command",
                template,
                "--timeout",
                "60",
                "--log-file",
                str(tmp_path / "logs"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "qwq-agent serve: the router exited with status" in cli.stderr
    assert f"fix: read the logs in {tmp_path / 'logs'}" in cli.stderr and "Traceback" not in cli.stderr
    for port in (base + 1, base + 2):
        assert probe(f"http://127.0.0.1:{port}", timeout=1) is None
