"""A queue fair between ports, for the packets between the switch's CPU port
and the daemon (both ways: softswitch.server.Stream, p4runtime.StreamOut).

Each port's packets wait in a queue of their own, `depth` deep (a full
port's packet is refused, for its caller to count as dropped), and the
queue gives one packet from each port with some waiting in turn, as the
kernel's receive path takes a budget from each device in turn
(net_rx_action). A port with more packets than the consumer takes (a
flood) fills its own queue; every other port's packet waits for at most
one packet of each other port. What is put first (the stream's control
messages: arbitration, errors, idle-timeout notifications) goes before
any port's packet, in its own order.

Not synchronized: its owner locks (a thread's condition) or runs it on one
event loop.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable


class PortFairQueue:
    def __init__(self, depth: int, first_depth: int | None = None):
        """first_depth: how many items put first may wait (None: no bound)."""
        self.depth, self.first_depth = depth, first_depth
        self._first: collections.deque = collections.deque()
        self._ports: dict[Hashable, collections.deque] = {}
        self._turn: collections.deque = collections.deque()    # ports with some waiting, in turn
        self._len = 0

    def put_first(self, item) -> bool:
        """Queue item before every port's; False: first_depth wait already."""
        if self.first_depth is not None and len(self._first) >= self.first_depth:
            return False
        self._first.append(item)
        self._len += 1
        return True

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
        """The next item: one put first, else one from the port whose turn
        it is (IndexError: none waits)."""
        if self._first:
            self._len -= 1
            return self._first.popleft()
        port = self._turn.popleft()
        q = self._ports[port]
        item = q.popleft()
        if q:
            self._turn.append(port)
        self._len -= 1
        return item

    def __len__(self) -> int:
        return self._len
