"""The daemon's local socket: one JSON request a line, one JSON answer a line
({"ok": true, "result": ...} or {"ok": false, "error": "..."}); `monitor`
turns the connection into a stream of events, one JSON object a line.

What a client sends is never trusted: a line that is not a JSON object, an
unknown command, wrong arguments or a line over MAX_LINE get an error answer
(a line too long also ends the connection); a client that goes away mid-answer
is forgotten. None of it reaches the daemon's state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
from pathlib import Path
from typing import Awaitable, Callable

from .events import EventBus, FlowFilter, event_lines
from .p4runtime import SwitchError

log = logging.getLogger("p4ft")

MAX_LINE = 1 << 20
DRAIN_LIMIT = 64 << 20
ITEMS_A_TURN = 1000      # a long answer's list items encoded between the event loop's turns


class Encoded(list):
    """A list answer whose items are JSON text already (json.dumps of each):
    written as they are. Text is not walked by Python's collector, where
    100,000 rows of dictionaries held until sent set off its full
    collections, each a pause of the daemon (docs/benchmarks.md)."""


class ApiServer:
    def __init__(self, path: str, handle: Callable[[str, dict], Awaitable], bus: EventBus):
        self.path, self.handle, self.bus = path, handle, bus
        self.server: asyncio.AbstractServer | None = None
        self.errors = 0

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)

    def close(self) -> None:
        if self.server:
            self.server.close()
            if os.path.exists(self.path):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:       # over the limit: answered, then the connection ends
                    self.errors += 1
                    await self._send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    await self._drain_and_hang_up(reader, writer)
                    return
                if not line:
                    return
                try:
                    try:
                        req = json.loads(line.decode("utf-8"))
                    except ValueError as e:      # not UTF-8, not JSON
                        raise ValueError(f"not a JSON request: {e}") from None
                    if not isinstance(req, dict) or not isinstance(req.get("args", {}), dict):
                        raise ValueError('a request is a JSON object {"cmd": NAME, "args": {...}}')
                    cmd, args = str(req.get("cmd", "")), req.get("args", {})
                    if cmd == "monitor":
                        await self._monitor(reader, writer, args)
                        return
                    resp = {"ok": True, "result": await self.handle(cmd, args)}
                except (ValueError, KeyError, TypeError, SwitchError) as e:
                    self.errors += 1
                    resp = {"ok": False, "error": str(e) or type(e).__name__}
                await self._send(writer, resp)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _drain_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """End our side, and read what the client still sends (a while, at most
        DRAIN_LIMIT): closing with unread input would reset the connection
        before the client reads the answer."""
        writer.write_eof()
        got, end = 0, asyncio.get_running_loop().time() + 5
        while got < DRAIN_LIMIT and (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), left)
            except asyncio.TimeoutError:
                return
            if not chunk:
                return
            got += len(chunk)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj) -> None:
        """The answer, one JSON line. A long list (a flow list of 100,000
        rows) is encoded a part at a time, with the daemon's other work
        between the parts; the text is json.dumps's all the same ("result"
        the answer's last key, as in every answer). An Encoded list's items
        are written as they are."""
        result = obj.get("result") if isinstance(obj, dict) else None
        if not isinstance(result, list) or len(result) <= ITEMS_A_TURN and not isinstance(result, Encoded):
            writer.write((json.dumps(obj) + "\n").encode())
            await writer.drain()
            return
        head = json.dumps({k: v for k, v in obj.items() if k != "result"})
        writer.write(f'{head[:-1]}{", " if len(head) > 2 else ""}"result": ['.encode())
        encode = str if isinstance(result, Encoded) else json.dumps
        for i in range(0, len(result), ITEMS_A_TURN):
            part = ", ".join([encode(x) for x in result[i:i + ITEMS_A_TURN]])
            writer.write(((", " if i else "") + part).encode())
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"]}\n")
        await writer.drain()

    async def _monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: dict) -> None:
        """Events to the client until it hangs up. Its socket is read
        meanwhile (what it sends is ignored), so a client that goes away
        while no event comes is unsubscribed then, not at the next event's
        write; one that only shuts its sending side (`nc -U` at the end of
        its input) still gets its events."""
        m = self.bus.subscribe(FlowFilter.from_args(args.get("filter")))
        stream = asyncio.ensure_future(self._stream(writer, m))
        gone = asyncio.ensure_future(self._hung_up(reader, writer))
        try:
            done, _ = await asyncio.wait((stream, gone), return_when=asyncio.FIRST_COMPLETED)
            if stream in done or not gone.result():
                await stream        # its end: a ConnectionError when the client went away mid-write
        finally:
            for t in (stream, gone):
                t.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
            self.bus.unsubscribe(m)

    async def _stream(self, writer: asyncio.StreamWriter, m) -> None:
        """What is queued goes in one write: a burst of offloads costs a
        write and a drain, not one per event."""
        await self._send(writer, {"ok": True, "result": "monitoring"})
        while True:
            writer.write(event_lines(await self.bus.take(m)))
            await writer.drain()

    @staticmethod
    async def _hung_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """At the end of the client's input: whether it has gone (True), or
        only shut its sending side. A Unix stream socket whose peer closed
        polls as hung up (both directions shut); one whose peer shut only
        its sending side does not."""
        try:
            while await reader.read(1 << 16):
                pass
        except ConnectionError:     # closed with our events unread: reset
            return True
        sock = writer.get_extra_info("socket")
        if sock is None:
            return True
        p = select.poll()
        p.register(sock.fileno(), select.POLLHUP)
        return bool(p.poll(0))
