"""Every benchmark runs to its end at a tiny size on the embedded target and
writes its results: a benchmark that no longer runs fails here, not on the
day someone needs its figures. Sizes are the smallest that still go through
every phase; the figures themselves mean nothing at these sizes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# not benchmarks: the results' writer, the plots, the daemon as offload_rate.py --callgrind runs it
HELPERS = {"record.py", "plot.py", "callgrind_daemon.py"}

SMOKE = {
    "memory.py": ["--flows", "1000"],
    "offload_rate.py": ["--switch", "soft", "--flows", "300", "--latency-flows", "20", "--pace", "50",
                        "--rtt-samples", "10"],
    "paths.py": ["--switch", "soft", "--seconds", "1", "--rounds", "1"],
    "poll_cost.py": ["--switch", "soft", "--flows", "300"],
    "punt_storm.py": ["--switch", "soft", "--seconds", "2"],
    "reroute.py": ["--switch", "soft", "--sizes", "100", "--rounds", "2", "--flap-flows", "100",
                   "--flap-changes", "20", "--flap-seconds", "1"],
    "restart.py": ["--switch", "soft", "--flows", "100"],
    "aging.py": ["--switch", "soft", "--flows", "0,100", "--burst", "100", "--probes", "10", "--timeout", "2"],
    "switch_pps.py": ["--switch", "soft", "--packets", "200", "--rounds", "1", "--no-l3fwd"],
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.name for p in BENCH.glob("*.py")} - HELPERS
    assert scripts == set(SMOKE), f"bench scripts without a smoke run here: {sorted(scripts - set(SMOKE))}"


def test_callgrind_daemon_runs_the_cli_with_the_route_answers_kept_longer():
    """bench/callgrind_daemon.py is the CLI (its arguments passed on), with
    route.CACHE_TTL scaled: `daemon --help` answers as the CLI's does, and
    the module it imported holds the scaled TTL."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
    p = subprocess.run([sys.executable, str(BENCH / "callgrind_daemon.py"), "daemon", "--help"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--grpc-addr" in p.stdout
    probe = ("import runpy, sys\nsys.argv = ['x', '--version']\n"
             f"try:\n    runpy.run_path({str(BENCH / 'callgrind_daemon.py')!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "from p4flowtable import route\nprint(route.CACHE_TTL)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    from p4flowtable import route
    assert float(p.stdout.split()[-1]) == route.CACHE_TTL * 50


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-results")


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks need root (namespaces, veths)")
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_to_the_end_and_writes_its_results(script, results):
    out = results / script.replace(".py", ".json")
    p = subprocess.run([sys.executable, str(BENCH / script), *SMOKE[script], "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data, f"{script} wrote empty results"


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks need root (namespaces, veths)")
def test_offload_rate_keeps_a_reading_monitor_through_the_burst(results):
    """offload_rate.py --monitor reading: its client reads an OFFLOAD event
    for every flow of the burst (what the monitor's cost is measured over)."""
    out = results / "offload_rate-monitor.json"
    p = subprocess.run([sys.executable, str(BENCH / "offload_rate.py"), *SMOKE["offload_rate.py"],
                        "--monitor", "reading", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, f"offload_rate.py --monitor reading failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    data = json.loads(out.read_text())
    flows = int(SMOKE["offload_rate.py"][SMOKE["offload_rate.py"].index("--flows") + 1])
    assert data["monitor"] == "reading" and data["monitor_lines_read"] >= flows + 1, data.get("monitor_lines_read")


def test_plots_are_drawn_from_the_smoke_results(results, tmp_path):
    if not any(results.glob("*.json")):
        pytest.skip("no benchmark ran")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed ('make install' installs it)")
    p = subprocess.run([sys.executable, str(BENCH / "plot.py"), "--results", str(results), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert any(tmp_path.glob("*.png")), p.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks need root (namespaces, veths)")
@pytest.mark.skipif(not (shutil.which("valgrind") and shutil.which("callgrind_control")),
                    reason="valgrind (callgrind) is not installed on this machine")
def test_restart_counts_the_restarted_daemons_instructions_under_callgrind(results):
    """The reconcile's instructions a flow (docs/restarts.md): counted, and
    the restarted daemon under valgrind still adopts every flow."""
    out = results / "restart-callgrind.json"
    p = subprocess.run([sys.executable, str(BENCH / "restart.py"), "--switch", "soft", "--flows", "100",
                        "--rounds", "1", "--callgrind", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, f"restart.py --callgrind failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    run, = json.loads(out.read_text())["runs"]
    assert run["adopted"] == 100 and run["callgrind_instructions_per_flow"] > 0, run
