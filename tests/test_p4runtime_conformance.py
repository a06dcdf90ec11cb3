"""The embedded target against a stock P4Runtime client (p4runtime-shell, in a
venv of its own: it pins an old protobuf), every answer compared with BMv2's
where BMv2 is installed."""

import json
import os
import shutil
import subprocess

import pytest

from integration import ROOT
from p4ft_topo import switch_on_veths, wait_port

SHELL_PY = ROOT / ".venv-shell" / "bin" / "python"
CLIENT = ROOT / "tests" / "p4rt_shell_client.py"
BUILD = ROOT / "p4src" / "build"
LINKS = [("p4ct-s1", "p4ct-p1"), ("p4ct-s2", "p4ct-p2")]


def kinds() -> list[str]:
    return ["soft"] + (["bmv2"] if shutil.which("simple_switch_grpc") else [])


@pytest.fixture(scope="module")
def answers():
    if os.geteuid() != 0:
        pytest.skip("needs root (veth pairs, raw sockets)")
    if not SHELL_PY.exists():
        pytest.skip(f"p4runtime-shell is not installed in {SHELL_PY.parent.parent} ('make install' makes it)")
    out = {}
    for kind in kinds():
        with switch_on_veths(kind, LINKS) as grpc:
            host, port = grpc.rsplit(":", 1)
            wait_port(host, int(port), 30)
            r = subprocess.run([str(SHELL_PY), str(CLIENT), grpc, str(BUILD / "flowtable.p4info.txtpb"),
                                str(BUILD / "flowtable.json"), LINKS[0][1]],
                               capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"p4runtime-shell against {kind}:\n{r.stderr[-3000:]}"
            out[kind] = json.loads(r.stdout.strip().splitlines()[-1])   # the shell prints too
    return out


def test_the_embedded_target_answers_a_stock_client_as_the_spec_says(answers):
    a = answers["soft"]
    # canonical byte strings in read responses (spec 8.4): port 1 is 01, not 0001
    assert a["port_entry"] == [{"match": {"1": "01"}, "action": {"1": "01"}, "idle_timeout_ns": 0}]
    assert a["nexthop_entry"] == [{"match": {"1": "07"}, "action": {"1": "02", "2": "020000000201",
                                                                   "3": "020000000002"}, "idle_timeout_ns": 0}]
    flow = a["flow_entry"][0]
    assert flow["match"] == {"1": "01", "2": "0a000101", "3": "c0000202", "4": "11", "5": "9c40", "6": "35"}
    assert flow["action"] == {"1": "07", "2": "05dc"}      # route_v4: the next hop's id, the route's MTU
    assert a["after_modify"][0]["action"]["2"] == "0578"
    assert a["duplicate_insert"] == "ALREADY_EXISTS"
    assert a["missing_delete"] == "NOT_FOUND"
    assert a["after_delete"] == []
    assert a["direct_counter"] is not None and a["direct_counter"][0][0] == 3
    [pin] = a["packet_in"]
    assert pin["payload"].startswith("020000000001") and pin["metadata"]["1"] == "01"
    # the punt meter, set and read back; five misses through a burst of two
    assert a["meter"] == [[1, 1, 2, 1, 2]]
    assert a["metered_packet_in"] == 2 and a["punt_dropped"] == [3]


def test_the_embedded_target_answers_as_bmv2_does(answers):
    if "bmv2" not in answers:
        pytest.skip("BMv2 (simple_switch_grpc) is not installed on this machine")
    assert answers["soft"] == answers["bmv2"]
