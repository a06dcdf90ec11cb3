"""Next-hop resolution in a router namespace, both families, against the real
kernel's routes and neighbours (pyroute2 in the namespace, as the daemon)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess

import pytest
from pyroute2 import AsyncIPRoute

from p4flowtable.ip import RouteError, Routes
from p4flowtable.netns import netlink_socket

NS = "p4ft-rtt"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 (a network namespace)")


def ip(*args: str) -> None:
    subprocess.run(["ip", "-n", NS, *args], check=True, capture_output=True)


@pytest.fixture
def ns():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for name, mtu in (("lan0", 1500), ("wan0", 1400), ("other0", 1500)):
        ip("link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", name + "p")
        ip("link", "set", name + "p", "up")
        ip("link", "set", name, "up")
    ip("addr", "add", "10.0.1.254/24", "dev", "lan0")
    ip("addr", "add", "192.0.2.1/24", "dev", "wan0")
    ip("-6", "addr", "add", "2001:db8:1::fe/64", "dev", "lan0", "nodad")
    ip("-6", "addr", "add", "2001:db8:2::fe/64", "dev", "wan0", "nodad")
    ip("-6", "addr", "add", "2001:db8:3::fe/64", "dev", "other0", "nodad")
    ip("-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8:2::2")
    ip("neigh", "add", "10.0.1.1", "lladdr", "00:00:00:00:00:01", "dev", "lan0", "nud", "permanent")
    ip("-6", "neigh", "add", "2001:db8:2::2", "lladdr", "00:00:00:00:00:02", "dev", "wan0", "nud", "permanent")
    yield NS
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def test_hops_of_both_families(ns):
    async def run():
        ipr = AsyncIPRoute(use_socket=netlink_socket(ns, 0))   # NETLINK_ROUTE
        try:
            routes = Routes(ipr, {"lan0": 1, "wan0": 2})
            h4 = await routes.hop(ipaddress.ip_address("10.0.1.1"))
            assert (h4.ifname, h4.route.port, h4.route.dst_mac, h4.route.mtu) == \
                ("lan0", 1, "00:00:00:00:00:01", 1500)
            # via a gateway: the gateway's neighbour entry, the link's MTU
            h6 = await routes.hop(ipaddress.ip_address("2001:db8:99::7"))
            assert (h6.ifname, h6.route.port, h6.route.dst_mac, h6.route.mtu) == \
                ("wan0", 2, "00:00:00:00:00:02", 1400)
            with pytest.raises(RouteError, match="not resolved"):
                await routes.hop(ipaddress.ip_address("2001:db8:1::9"))    # no neighbour yet
            with pytest.raises(RouteError, match="no switch port"):
                await routes.hop(ipaddress.ip_address("2001:db8:3::1"))
        finally:
            ipr.close()
    asyncio.run(run())
