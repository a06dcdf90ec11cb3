"""A long answer on the API socket (a flow list of 100,000 rows) is encoded a
part at a time, the daemon's other work running between the parts, and reads
as json.dumps's one line all the same."""

from __future__ import annotations

import asyncio
import json
import socket

from p4flowtable import apiserver
from p4flowtable.apiserver import ApiServer, Encoded
from p4flowtable.events import EventBus


class Row(dict):
    """A row that notes the event loop's turns counted when it is encoded
    (json's encoder asks a dict subclass for its items)."""
    turns: list[int] = []
    now = [0]

    def items(self):
        Row.turns.append(Row.now[0])
        return super().items()


async def ask(path: str, line: bytes) -> bytes:
    """One request on a real Unix socket; the answer's line, whole."""
    loop = asyncio.get_running_loop()
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        await loop.sock_connect(c, path)
        await loop.sock_sendall(c, line)
        got = b""
        while not got.endswith(b"\n"):
            chunk = await asyncio.wait_for(loop.sock_recv(c, 1 << 20), 10)
            assert chunk, f"the daemon hung up after {len(got)} bytes"
            got += chunk
        return got
    finally:
        c.close()


def test_a_long_answer_is_json_dumps_text_made_between_the_loops_turns(tmp_path):
    n = 2 * apiserver.ITEMS_A_TURN + 500
    rows = [Row(id=i, orig={"src": "10.0.1.1", "sport": 40000 + i}, name='f"t\\ö', idle=0.5 * i, ok=None)
            for i in range(n)]

    async def main() -> bytes:
        path = str(tmp_path / "api.sock")

        async def handle(cmd, args):
            return rows if cmd == "flow_list" else cmd
        server = ApiServer(path, handle, EventBus())
        await server.start()

        async def ticking():
            while True:
                Row.now[0] += 1
                await asyncio.sleep(0)
        ticker = asyncio.ensure_future(ticking())
        try:
            return await ask(path, b'{"cmd": "flow_list", "args": {}}\n')
        finally:
            ticker.cancel()
            server.close()

    got = asyncio.run(main())
    assert got == (json.dumps({"ok": True, "result": rows}) + "\n").encode()
    mine = Row.turns[:n]            # the server's encoding (json.dumps above counts again)
    assert len(set(mine)) >= 3, "every row encoded in one turn of the event loop"
    assert mine == sorted(mine)


def test_an_encoded_answer_is_written_as_its_items_are(tmp_path):
    """A flow list's rows come as JSON text (Encoded), long or short: the
    answer reads as json.dumps of the rows."""
    async def main(rows: Encoded) -> bytes:
        path = str(tmp_path / "api.sock")

        async def handle(cmd, args):
            return rows
        server = ApiServer(path, handle, EventBus())
        await server.start()
        try:
            return await ask(path, b'{"cmd": "flow_list", "args": {}}\n')
        finally:
            server.close()

    for n in (0, 3, 2 * apiserver.ITEMS_A_TURN + 1):
        rows = [{"id": i, "proto": "tcp", "name": 'f"t\\ö', "idle": 0.1 * i} for i in range(n)]
        got = asyncio.run(main(Encoded(json.dumps(r) for r in rows)))
        assert got == (json.dumps({"ok": True, "result": rows}) + "\n").encode(), n
        assert json.loads(got)["result"] == rows
