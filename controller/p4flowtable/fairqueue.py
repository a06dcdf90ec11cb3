"""A queue fair between ports, for the packets between the switch's CPU port
and the daemon (both ways: softswitch.server.Stream, p4runtime.StreamOut).

Each port's packets wait in a queue of their own, `depth` deep (a full
port's packet is refused, for its caller to count as dropped), and the
queue gives one packet from each port with some waiting in turn, as the
kernel's receive path takes a budget from each device in turn
(net_rx_action). A port with more packets than the consumer takes (a
flood) fills its own queue; every other port's packet waits for at most
one packet of each other port.

Not synchronized: its owner locks (a thread's condition) or runs it on one
event loop.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable


class PortFairQueue:
    def __init__(self, depth: int):
        self.depth = depth
        self._ports: dict[Hashable, collections.deque] = {}
        self._turn: collections.deque = collections.deque()    # ports with some waiting, in turn
        self._len = 0

    def put(self, port: Hashable, item) -> bool:
        """Queue item for port; False: that port's queue is full."""
        q = self._ports.get(port)
        if q is None:
            q = self._ports[port] = collections.deque()
        if len(q) >= self.depth:
            return False
        if not q:
            self._turn.append(port)
        q.append(item)
        self._len += 1
        return True

    def pop(self):
        """The next item, from the port whose turn it is (IndexError: none waits)."""
        port = self._turn.popleft()
        q = self._ports[port]
        item = q.popleft()
        if q:
            self._turn.append(port)
        self._len -= 1
        return item

    def __len__(self) -> int:
        return self._len
