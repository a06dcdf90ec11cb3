"""A connection declined because its next hop's neighbour was not resolved
yet is offloaded when the neighbour appears, with no further packet or
conntrack event: the daemon retries such declines on the neighbour event.
(The kernel would retry on the connection's next packet; one that went
quiet after its handshake would wait for its next packet.)"""

import asyncio
import subprocess
import time

import pytest

from integration import targets, wait_for
from offload_rate import NS, SOCK, create_entries, host_mac, lan_host, rig
from p4ft_topo import LAN
from p4flowtable.api import call

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("switch", targets())
def test_a_no_route_decline_is_retried_when_the_neighbour_appears(switch):
    with rig(switch, "noroute"):
        host = str(lan_host(0))
        subprocess.run(["ip", "-n", NS, "neigh", "del", host, "dev", LAN["rep"]], check=True)
        asyncio.run(create_entries(range(1)))
        wait_for(lambda: call("counters", path=SOCK).get("not_offloaded.no_route", 0) >= 1, 5,
                 "the decision declined: no neighbour")
        time.sleep(1.5)    # past the daemon's retry delay: nothing retries it but the neighbour
        assert call("counters", path=SOCK).get("offloaded", 0) == 0
        subprocess.run(["ip", "-n", NS, "neigh", "replace", host, "lladdr", host_mac(1, 0), "dev", LAN["rep"],
                        "nud", "permanent"], check=True)
        wait_for(lambda: call("counters", path=SOCK).get("offloaded", 0) == 1, 3,
                 "the connection offloaded once its neighbour is there")
