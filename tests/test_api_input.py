"""Bad requests on the daemon's socket, on each available switch: garbage,
unknown commands, wrong arguments, huge lines, abrupt disconnects. Each gets
an error answer (or is forgotten), the daemon stays up and nothing changes."""

import json
import socket

import pytest

from integration import net_per_switch, wait_for

pytestmark = pytest.mark.integration

net = net_per_switch()


def exchange(net, payload: bytes, read: bool = True) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(net.socket)
    try:
        s.sendall(payload)
        if read:
            s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):    # the daemon answered, then hung up
        pass
    if not read:
        s.close()
        return []
    buf = b""
    while chunk := s.recv(1 << 16):
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


def state(net) -> tuple:
    st = net.api("stats")
    return (json.dumps(net.api("flowtable_list"), sort_keys=True), st["role"], st["flows_offloaded_now"])


@pytest.mark.parametrize("payload,error", [
    (b"\x00\xff garbage\n", "not a JSON request"),
    (b"{'cmd': 'stats'}\n", "not a JSON request"),
    (b"[1, 2, 3]\n", "a request is a JSON object"),
    (b'{"cmd": "rm -rf /"}\n', "unknown command 'rm -rf /'"),
    (b'{"cmd": "flowtable_add", "args": {"name": "x"}}\n', "devices"),
    (b'{"cmd": "flowtable_add", "args": {"name": "x", "devices": ["nope"], "timeout": 1}}\n',
     "['nope'] are not switch ports"),
    (b'{"cmd": "flowtable_delete", "args": {"name": "nope"}}\n', "no flowtable 'nope'"),
    (b'{"cmd": "flow_list", "args": {"filter": {"sport": "eighty"}}}\n', "invalid literal"),
    (b'{"cmd": "stats", "args": "not an object"}\n', "a request is a JSON object"),
    (b'{"cmd": "ruleset_reload", "args": {"path": "/nonexistent.nft"}}\n', "cannot read the ruleset"),
])
def test_a_bad_request_gets_an_error_and_changes_nothing(net, payload, error):
    before = state(net)
    [answer] = exchange(net, payload)
    assert answer["ok"] is False and error in answer["error"], answer
    assert state(net) == before


def test_a_huge_line_is_refused_and_the_daemon_stays(net):
    before = state(net)
    answers = exchange(net, b'{"cmd": "stats", "pad": "' + b"x" * (3 << 20) + b'"}\n')
    assert answers[0]["ok"] is False and "longer than" in answers[0]["error"]
    assert state(net) == before


def test_abrupt_disconnects_are_forgotten(net):
    before = state(net)
    errors = net.api("stats")["api_errors"]
    for payload in (b'{"cmd": "flow_list"', b'{"cmd": "flow_list"}\n', b'{"cmd": "monitor"}\n', b"\xff" * 1000):
        exchange(net, payload, read=False)
    # the two unterminated lines are still read at the hang-up, and refused
    errors = wait_for(lambda: (e := net.api("stats")["api_errors"]) == errors + 2 and e, 5,
                      "the daemon to see the hang-ups")
    # many requests on one connection, answered in order, after all that
    answers = exchange(net, b'{"cmd": "ping"}\n{"cmd": "nope"}\n{"cmd": "ping"}\n')
    assert [a.get("result") for a in answers] == ["pong", None, "pong"]
    assert net.api("stats")["api_errors"] == errors + 1
    assert state(net) == before
