"""P4Runtime session over gRPC: arbitration, pipeline, writes, reads, stream.

One stream reader demultiplexes the StreamChannel into bounded queues
(PacketIn, idle-timeout notifications); what goes out on the stream waits
in StreamOut, PacketOuts fair between egress ports; everything else is
request/response.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Sequence

import grpc
from google.rpc import code_pb2, status_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from . import wire
from .fairqueue import PortFairQueue
from .tls import TlsFiles, handshake_hint

log = logging.getLogger(__name__)


class SwitchError(Exception):
    """The switch is unreachable, refused us, or failed a request."""


class SwitchUnavailable(SwitchError):
    pass


class SwitchRefused(SwitchUnavailable):
    """The connection failed at its TLS handshake: a certificate one side
    does not accept, or TLS on one side only. Retrying will not help until
    an operator changes a certificate or an option."""


@dataclass(frozen=True, slots=True)
class UpdateError:
    index: int
    code: str
    message: str


class WriteError(SwitchError):
    """A batch write failed; ``errors`` holds each failed update's status."""

    def __init__(self, errors: list[UpdateError], what: str = "write"):
        self.errors = errors
        lines = "; ".join(f"update {e.index}: {e.code}: {e.message}" for e in errors)
        super().__init__(f"{what} rejected by the switch: {lines}")

    def only(self, *codes: str) -> bool:
        return all(e.code in codes for e in self.errors)


def _code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code)


def write_errors(err: grpc.RpcError) -> list[UpdateError]:
    """Per-update errors from a failed Write (P4Runtime spec, Error Reporting)."""
    details = None
    for key, value in (err.trailing_metadata() or ()):
        if key == "grpc-status-details-bin":
            details = status_pb2.Status.FromString(value)
    if details is None or not details.details:
        return [UpdateError(-1, err.code().name, err.details() or "")]
    out = []
    for i, anymsg in enumerate(details.details):
        p4err = p4runtime_pb2.Error()
        if anymsg.Unpack(p4err) and p4err.canonical_code != code_pb2.OK:
            out.append(UpdateError(i, _code_name(p4err.canonical_code), p4err.message))
    return out


def open_channel(address: str, credentials: grpc.ChannelCredentials | None, server_name: str | None = None, *,
                 aio: bool = True) -> grpc.Channel | grpc.aio.Channel:
    """A channel to the switch (TLS with credentials, else plaintext), with
    room for the largest read and a batch's errors. aio=False: a blocking
    channel (entryread.py's reader process)."""
    options = [("grpc.max_receive_message_length", 256 << 20),
               ("grpc.max_send_message_length", 256 << 20),
               # a batch's per-update errors come in the trailers
               ("grpc.max_metadata_size", 16 << 20),
               # a switch that starts after us is found within a quarter second
               ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
               ("grpc.min_reconnect_backoff_ms", 100)]
    mod = grpc.aio if aio else grpc
    if credentials is None:
        return mod.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return mod.secure_channel(address, credentials, options=options)


class StreamOut:
    """What the session sends the switch on its stream, waiting until the
    stream takes it (gRPC takes a message when the switch's flow control
    lets it: a switch that reads its stream slower than PacketOuts come
    leaves them here).

    Arbitration goes before any PacketOut. PacketOuts wait in a queue fair
    between egress ports (fairqueue.py), PORT_QUEUE deep for each: a port
    the kernel sends more than the switch takes (answers to a flood) fills
    its own queue, and every other port's frames wait for at most one frame
    of each."""

    PORT_QUEUE = 1024

    def __init__(self):
        self._queue = PortFairQueue(self.PORT_QUEUE)     # PacketOuts by egress port, the rest first
        self._ready = asyncio.Event()

    def put(self, msg: p4runtime_pb2.StreamMessageRequest | None) -> None:
        """A message other than a PacketOut (None: the stream ends)."""
        self._queue.put_first(msg)
        self._ready.set()

    def put_packet(self, port: int | None, msg: p4runtime_pb2.StreamMessageRequest) -> bool:
        """A PacketOut for the egress port (None: unnamed); False: its queue is full."""
        if not self._queue.put(port, msg):
            return False
        self._ready.set()
        return True

    async def get(self) -> p4runtime_pb2.StreamMessageRequest | None:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.pop()

    def __len__(self) -> int:
        return len(self._queue)


def _last_error(details: str) -> str:
    """gRPC's 'failed to connect to all addresses; last error: X: addr: why' as 'why'."""
    tail = details.split("last error: ", 1)[-1]
    return tail.split(": ", 2)[-1] if tail.count(": ") >= 2 else tail


class Session:
    """A controller's session with one switch: primary, or backup until the
    switch says there is no primary and it claims the role (spec 5.4)."""

    def __init__(self, address: str, device_id: int = 1, election_id: int = 1,
                 queue_size: int = 4096, tls: TlsFiles | None = None, server_name: str | None = None):
        """tls: the CA that signed the switch's certificate and this
        controller's own certificate and key (mutual TLS); None: plaintext.
        server_name: the name the switch's certificate carries, where it is
        not the address's host."""
        self.address = address
        self.tls = tls if tls is not None and tls.enabled else None
        self._credentials = self.tls.channel_credentials() if self.tls else None
        self.server_name = server_name
        self.last_error: str | None = None     # why the last connection attempt failed; None once connected
        self.device_id = device_id
        self.election_id = election_id
        self.packet_in: asyncio.Queue[p4runtime_pb2.PacketIn] = asyncio.Queue(queue_size)
        # unbounded: a lost notification is a flow that never expires; there
        # are at most as many as entries
        self.idle: asyncio.Queue[p4runtime_pb2.IdleTimeoutNotification] = asyncio.Queue()
        self.dropped_packet_in = 0
        self.writes = 0                      # Write requests sent
        self.write_errors: collections.Counter[str] = collections.Counter()   # updates refused, by code
        self.lost = asyncio.Event()
        self.is_primary = False
        self.highest_eid = 0                  # the highest election id the switch reports
        self.role_changed = asyncio.Event()   # became primary without asking (a server that promotes)
        self.no_primary = asyncio.Event()     # the switch has no primary: a backup may claim it
        self._channel: grpc.aio.Channel | None = None
        self._stub: p4runtime_pb2_grpc.P4RuntimeStub | None = None
        self._out = StreamOut()
        self._reader: asyncio.Task | None = None
        self._arbitrated: asyncio.Future | None = None

    @property
    def _eid(self) -> p4runtime_pb2.Uint128:
        return p4runtime_pb2.Uint128(high=self.election_id >> 64, low=self.election_id & (2**64 - 1))

    async def connect(self, timeout: float = 10.0, allow_backup: bool = False) -> bool:
        """Open the channel and arbitrate: True when primary. A backup stays
        connected with allow_backup, else SwitchUnavailable is raised."""
        await self.close()
        self.lost.clear()
        self.is_primary = False
        self.role_changed.clear()
        self.no_primary.clear()
        self._channel = open_channel(self.address, self._credentials, self.server_name)
        self._stub = p4runtime_pb2_grpc.P4RuntimeStub(self._channel)
        # Write taking a serialized WriteRequest (write_encoded)
        self._raw_write = self._channel.unary_unary("/p4.v1.P4Runtime/Write", request_serializer=None,
                                                    response_deserializer=None)
        try:
            await self._reach(timeout)
        except SwitchUnavailable as e:
            self.last_error = str(e)
            await self.close()
            raise
        self.last_error = None
        self._out = StreamOut()
        call = self._stub.StreamChannel(self._requests())
        self._reader = asyncio.create_task(self._read_stream(call), name="p4rt-stream")
        try:
            status = await self._arbitrate(timeout)
        except SwitchUnavailable:
            await self.close()
            raise
        if status.code != code_pb2.OK and not allow_backup:
            await self.close()
            raise SwitchUnavailable(
                f"{self.address}: not primary for device {self.device_id} "
                f"(election id {self.election_id}): {status.message}")
        return self.is_primary

    async def _reach(self, timeout: float) -> None:
        """Wait for the switch's P4Runtime server, at most timeout seconds.
        Asks it for its Capabilities without waiting for the channel, so that
        each failed attempt says why: a refused TLS handshake is raised at
        once as SwitchRefused, naming the cause, instead of being retried in
        silence until the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        closed = 0       # attempts in a row the switch closed the socket on
        while True:
            left = deadline - loop.time()
            try:
                await self._stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(),
                                              timeout=max(0.1, min(left, 2.0)), wait_for_ready=False)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return     # a server answered (an old one may not know Capabilities)
                last = e.details() or e.code().name
                refused = handshake_hint(last, self.server_name)
                closed = closed + 1 if "socket closed" in last.lower() else 0
                # a closed socket is the refusal only when it repeats: a
                # switch going down may close one connection the same way
                if refused is None and closed >= 2:
                    refused = self._closed_reason()
                if refused:
                    raise SwitchRefused(f"TLS handshake with {self.address} failed: {refused} "
                                        f"({_last_error(last)})") from None
            if loop.time() >= deadline:
                raise SwitchUnavailable(f"no P4Runtime server at {self.address} after {timeout:.0f}s: "
                                        f"{_last_error(last)}")
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    def _closed_reason(self) -> str:
        """The switch closed the connection before any HTTP/2: what a TLS
        switch does to a client whose certificate it refuses (or to
        plaintext), and what nothing else does before a request."""
        if self.tls:
            return ("the switch closed the connection at the TLS handshake: it does not accept this "
                    "controller's certificate (none given, not signed by the CA it trusts, or expired)")
        return "the switch closed the connection: it expects TLS (give --tls-ca, --tls-cert and --tls-key)"

    async def _arbitrate(self, timeout: float):
        self._arbitrated = asyncio.get_running_loop().create_future()
        self._out.put(p4runtime_pb2.StreamMessageRequest(
            arbitration=p4runtime_pb2.MasterArbitrationUpdate(
                device_id=self.device_id, election_id=self._eid)))
        try:
            status = await asyncio.wait_for(asyncio.shield(self._arbitrated), timeout)
        except asyncio.TimeoutError:
            raise SwitchUnavailable(f"{self.address}: no arbitration answer after {timeout:.0f}s") from None
        self.is_primary = status.code == code_pb2.OK
        return status

    async def claim_primary(self, timeout: float = 5.0) -> bool:
        """Become primary with an election id above the highest the switch
        reports (the spec's way for a backup to take over). True on success."""
        self.election_id = max(self.election_id, self.highest_eid + 1)
        self.no_primary.clear()
        status = await self._arbitrate(timeout)
        return status.code == code_pb2.OK

    async def _requests(self):
        while True:
            msg = await self._out.get()
            if msg is None:
                return
            yield msg

    async def _read_stream(self, call) -> None:
        try:
            async for resp in call:
                kind = resp.WhichOneof("update")
                if kind == "arbitration":
                    a = resp.arbitration
                    if a.HasField("election_id"):
                        self.highest_eid = max(self.highest_eid, (a.election_id.high << 64) | a.election_id.low)
                    if self._arbitrated and not self._arbitrated.done():
                        self._arbitrated.set_result(a.status)
                        if a.status.code == code_pb2.NOT_FOUND:
                            # no primary already when we asked (one with a higher
                            # election id left before): no later answer will say so
                            self.no_primary.set()
                    elif a.status.code == code_pb2.OK:
                        if not self.is_primary:
                            self.is_primary = True
                            self.role_changed.set()
                    elif self.is_primary:
                        log.error("lost primary role on %s", self.address)
                        break
                    elif a.status.code == code_pb2.NOT_FOUND:
                        self.no_primary.set()
                elif kind == "packet":
                    self._put(self.packet_in, resp.packet)
                elif kind == "idle_timeout_notification":
                    self._put(self.idle, resp.idle_timeout_notification)
                elif kind == "error":
                    log.warning("stream error from switch: %s", resp.error)
        except grpc.aio.AioRpcError as e:
            log.warning("P4Runtime stream to %s ended: %s %s", self.address, e.code().name, e.details())
            if self._arbitrated and not self._arbitrated.done():
                self._arbitrated.set_exception(SwitchUnavailable(f"{self.address}: {e.details()}"))
        except asyncio.CancelledError:
            raise
        finally:
            self.lost.set()

    def _put(self, q: asyncio.Queue, item) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped_packet_in += 1

    async def close(self) -> None:
        if self._reader:
            self._out.put(None)
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        if self._channel:
            await self._channel.close()
            self._channel = None

    def _check(self) -> p4runtime_pb2_grpc.P4RuntimeStub:
        if self._stub is None or self.lost.is_set():
            raise SwitchUnavailable(f"not connected to {self.address}")
        return self._stub

    def _closed_under_us(self) -> BaseException:
        """A request's CancelledError: the caller's task was cancelled (raised
        on), or the channel was closed under the request (a reconnect after
        the switch was lost), which is the switch being unavailable. (Not
        lost.set(): the reconnect that closed the channel owns that flag.)"""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return asyncio.CancelledError()
        return SwitchUnavailable(f"{self.address}: the connection closed under the request")

    async def set_pipeline(self, p4info, device_config: bytes, cookie: int = 0) -> None:
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, election_id=self._eid,
            action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
            config=p4runtime_pb2.ForwardingPipelineConfig(
                p4info=p4info, p4_device_config=device_config,
                cookie=p4runtime_pb2.ForwardingPipelineConfig.Cookie(cookie=cookie)))
        try:
            await self._check().SetForwardingPipelineConfig(req)
        except grpc.aio.AioRpcError as e:
            raise SwitchError(f"{self.address} rejected the pipeline: {e.code().name}: {e.details()}") from None

    async def get_pipeline_cookie(self) -> int | None:
        req = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            response_type=p4runtime_pb2.GetForwardingPipelineConfigRequest.COOKIE_ONLY)
        try:
            resp = await self._check().GetForwardingPipelineConfig(req)
        except grpc.aio.AioRpcError:
            return None
        return resp.config.cookie.cookie if resp.config.HasField("cookie") else None

    async def write(self, updates: list[p4runtime_pb2.Update], what: str = "write") -> None:
        """Write one batch; raise WriteError with every failed update's status."""
        if not updates:
            return
        req = p4runtime_pb2.WriteRequest(device_id=self.device_id, election_id=self._eid,
                                         updates=updates)
        await self._write(self._check().Write, req, what)

    async def write_encoded(self, updates: list[bytes], what: str = "write") -> None:
        """write() of Updates already serialized as WriteRequest fields
        (wire.py): the request is joined, not built and serialized."""
        if not updates:
            return
        self._check()
        await self._write(self._raw_write, wire.write_request(self.device_id, self.election_id, updates), what)

    async def _write(self, call, req, what: str) -> None:
        self.writes += 1
        try:
            await call(req)
        except asyncio.CancelledError:
            raise self._closed_under_us() from None
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                self.write_errors["UNAVAILABLE"] += 1
                self.lost.set()
                raise SwitchUnavailable(f"{self.address}: {e.details()}") from None
            errors = write_errors(e)
            self.write_errors.update(err.code for err in errors)
            raise WriteError(errors, what) from None

    async def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> AsyncIterator[p4runtime_pb2.Entity]:
        async for batch in self.read_batches(entities):
            for ent in batch:
                yield ent

    async def read_batches(self, entities: Iterable[p4runtime_pb2.Entity]) -> AsyncIterator[Sequence]:
        """read(), one ReadResponse's entities at a time: what a reader of
        hundreds of thousands of entries takes, one await per response."""
        req = p4runtime_pb2.ReadRequest(device_id=self.device_id, entities=list(entities))
        try:
            async for resp in self._check().Read(req):
                yield resp.entities
        except asyncio.CancelledError:
            raise self._closed_under_us() from None
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                self.lost.set()
                raise SwitchUnavailable(f"{self.address}: {e.details()}") from None
            raise SwitchError(f"read failed: {e.code().name}: {e.details()}") from None

    def packet_out(self, payload: bytes, metadata: list[p4runtime_pb2.PacketMetadata],
                   port: int | None = None) -> bool:
        """Queue a PacketOut (port: its egress port, for the fair queue);
        False: that port's queue is full and the frame is dropped."""
        self._check()
        return self._out.put_packet(port, p4runtime_pb2.StreamMessageRequest(
            packet=p4runtime_pb2.PacketOut(payload=payload, metadata=metadata)))
