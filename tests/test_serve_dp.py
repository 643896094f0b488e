"""`qwq-agent serve --dp N`: commands, waiting for every replica and the router, printing, stopping.

Against SGLang's real router in front of scripted workers (see tests/router_helpers.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from qwq_agent.agent.clients.routing import ROUTING_KEY_HEADER, routing_headers
from qwq_agent.cli.main import main
from qwq_agent.serve import ServerExited, ServerStartTimeout, probe
from qwq_agent.serve.fleet import (
    Fleet,
    FleetConfig,
    probe_router,
    router_command,
    router_policy_args,
    worker_specs,
)
from qwq_agent.serve.launcher import ServeConfig

pytest.importorskip("sglang_router", reason="sglang-router is not installed (pip install -e '.[router]')")

from router_helpers import (
    SCRIPTED,
    Router,
    free_ports,
    scripted,
    sigint_as_a_terminal_sends_it,
    stop_serve_cli,
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
    assert "--prometheus-host 127.0.0.1 --prometheus-port" in router  # not 0.0.0.0:29000, one per machine
    assert router_policy_args("round_robin") == ["--policy", "round_robin"]
    with pytest.raises(ValueError, match="unknown router policy"):
        FleetConfig(dp=2, policy="sticky")
    with pytest.raises(ValueError, match="2 GPUs named for 3 replicas"):
        FleetConfig(dp=3, gpus=["0", "1"])


def test_with_tensor_parallelism_each_replica_gets_its_own_gpus(capsys):
    fleet = FleetConfig(dp=2)
    specs = worker_specs(ServeConfig(tp=2), fleet)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0,1", "2,3"]
    assert main(["serve", "--dp", "2", "--tp", "2", "--gpus", "4,5,6,7", "--print-command"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CUDA_VISIBLE_DEVICES=4,5 ") and out[1].startswith("CUDA_VISIBLE_DEVICES=6,7 ")
    assert main(["serve", "--dp", "2", "--tp", "2", "--gpus", "0,1", "--print-command"]) == 2
    assert "--gpus names 2 GPUs; 2 replicas of --tp 2 need 4" in capsys.readouterr().err


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
        stop_serve_cli(cli)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert probe(f"http://127.0.0.1:{base + 1}", timeout=1) is None


def test_a_worker_that_exits_before_ready_is_named_with_its_log(tmp_path):
    base = free_ports(3)
    template = f"{SCRIPTED} --port {{port}} --model {tmp_path}"
    fleet_config = FleetConfig(dp=2, router_port=base)
    specs = worker_specs(ServeConfig(), fleet_config, template)
    specs[1].command += ["--unready-for", "100", "--exit-after", "0.5"]  # worker 1 crashes while loading
    fleet = Fleet(fleet_config, specs, tmp_path / "logs")
    fleet.start_workers()
    try:
        with pytest.raises(
            ServerExited, match=rf"worker 1 \(http://127.0.0.1:{base + 2}, GPU 1\) exited with status 3"
        ):
            fleet.wait_ready(timeout=60, poll_interval=0.2)
        assert not fleet.router.alive()  # the router is never started in front of a broken fleet
    finally:
        fleet.stop(5)
    assert "crashing on purpose" in (tmp_path / "logs" / "worker-1.log").read_text()


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
            fleet.wait_ready(timeout=10, poll_interval=0.2, on_progress=progress.append, report_every=1)
    finally:
        fleet.stop(5)
    assert progress.count(f"worker 0 ready: http://127.0.0.1:{base + 1}") == 1
    waiting = [line for line in progress if line.startswith("still waiting for worker 1 after")]
    assert waiting and f"scripted server on http://127.0.0.1:{base + 2}" in waiting[-1]  # its log's last line


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
    fleet_config = FleetConfig(dp=2, router_port=base, router_args=["--no-such-router-flag"])
    fleet = Fleet(fleet_config, worker_specs(ServeConfig(), fleet_config, template), tmp_path / "logs")
    fleet.start_workers()
    try:
        with pytest.raises(ServerExited, match="the router exited with status"):
            fleet.wait_ready(timeout=60, poll_interval=0.2)
    finally:
        fleet.stop(5)
    for port in (base + 1, base + 2):
        assert probe(f"http://127.0.0.1:{port}", timeout=1) is None


def test_a_taken_router_port_is_refused_before_anything_starts(tmp_path):
    base = free_ports(3)
    template = f"{SCRIPTED} --port {{port}} --model {tmp_path}"
    with socket.socket() as taken:  # the router's port is taken
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
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert f"qwq-agent serve: cannot serve: the router's port {base} is already in use" in cli.stderr
    assert "Traceback" not in cli.stderr and "pids:" not in cli.stdout  # nothing was started
    assert not (tmp_path / "logs").exists()


def test_a_command_template_without_port_is_refused_for_several_replicas(capsys):
    # Every replica would run the same command: they would fight over one port while the router waits on
    # ports nobody listens on, and the operator would learn it only when the health deadline passes.
    assert main(["serve", "--dp", "2", "--command", "my-server --gpu {gpu}", "--print-command"]) == 2
    err = capsys.readouterr().err
    assert "{port}" in err and "--dp 2" in err
    # One replica needs no placeholder; a template with {port} is taken.
    assert main(["serve", "--dp", "1", "--command", "my-server", "--print-command"]) == 0
    assert main(["serve", "--dp", "2", "--command", "my-server --port {port}", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "my-server --port 30001" in out and "my-server --port 30002" in out
