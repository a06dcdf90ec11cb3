"""The test topology itself: it must never program a switch it did not start."""

import socket

import pytest

from integration import missing

pytestmark = pytest.mark.integration


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_a_grpc_port_already_served_is_refused_by_name():
    from mininet.log import setLogLevel
    from p4ft_topo import FlowtableNet, Router
    setLogLevel("warning")
    with socket.socket() as held:     # a switch left running by an earlier run, say
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        net = FlowtableNet("soft", grpc_port=held.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match=f"127.0.0.1:{net.grpc_port} is already served"):
                net.start()
        finally:
            net.stop()
            Router().stop()
