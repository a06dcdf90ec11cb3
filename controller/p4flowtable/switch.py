"""The switch in the daemon's life: connection and arbitration, the pipeline,
port bindings, and what its tables hold when the daemon (re)connects.

A daemon that starts, or comes back after losing the switch, asks what the
switch runs (GetForwardingPipelineConfig, the cookie naming the compiled
program and its P4Info). The same program is kept, with its entries: the
flows the switch forwards keep being forwarded while the daemon restarts.
Anything else gets our pipeline, which starts empty. Then the switch's flow
entries are reconciled with what the daemon will carry (reconcile.py).
"""

from __future__ import annotations

import hashlib
import logging
from typing import AsyncIterator, Callable, Iterable, Sequence

from p4.v1 import p4runtime_pb2 as p4r

from .ip import entry_key
from .p4info import P4Schema
from .p4runtime import Session

log = logging.getLogger("p4ft")

WRITE_BATCH = 1024        # updates per Write while reconciling
FLOW_TABLES = ("flow_table_v4", "flow_table_v6")


def pipeline_cookie(p4info_bytes: bytes, device_config: bytes) -> int:
    """What names a compiled program: the first 64 bits of the sha256 of its
    P4Info and device config."""
    return int.from_bytes(hashlib.sha256(p4info_bytes + b"\0" + device_config).digest()[:8], "big")


class SwitchControl:
    def __init__(self, session: Session, schema: P4Schema, device_config: bytes,
                 settings: Callable[[], list[p4r.Update]] = list):
        """settings: the switch-wide configuration (the punt meter's cells),
        written (MODIFY) whenever the daemon takes the switch over."""
        self.session, self.schema, self.device_config = session, schema, device_config
        self.settings = settings
        self.cookie = pipeline_cookie(schema.p4info.SerializeToString(deterministic=True), device_config)
        self.pipeline_kept = False

    async def connect(self, timeout: float, port_updates: list[p4r.Update]) -> bool | None:
        """Arbitrate; as primary, take the switch over (take_over). None when
        another controller is primary: this one is a backup, and writes nothing."""
        if not await self.session.connect(timeout, allow_backup=True):
            log.info("%s: backup (election id %d; the primary's is %d)", self.session.address,
                     self.session.election_id, self.session.highest_eid)
            return None
        return await self.take_over(port_updates)

    async def take_over(self, port_updates: list[p4r.Update]) -> bool:
        """As primary: keep the pipeline when the switch runs ours, else
        install it; bind the flowtables' ports. True when the pipeline (and
        its entries) was kept."""
        self.pipeline_kept = await self.session.get_pipeline_cookie() == self.cookie
        if self.pipeline_kept:
            log.info("%s runs this pipeline already (cookie %#x): kept, with its entries",
                     self.session.address, self.cookie)
            await self._sync(self.schema.table("port_table").id, port_updates, "port binding")
        else:
            await self.session.set_pipeline(self.schema.p4info, self.device_config, self.cookie)
            await self.session.write(port_updates, "port binding")
        await self.write(self.settings(), "switch settings")
        return self.pipeline_kept

    async def _sync(self, table_id: int, wanted: list[p4r.Update], what: str) -> None:
        """Make a table hold exactly the wanted entries (INSERT, MODIFY, DELETE)."""
        have = {entry_key(e): e for e in await self.entries(table_id)}
        updates = [u for w in wanted if (u := update_for(w.entity.table_entry, have)) is not None]
        await self.session.write(updates + deletes(have.values()), what)

    async def entries(self, table_id: int) -> list[p4r.TableEntry]:
        return [e.table_entry async for e in self.session.read(
            [p4r.Entity(table_entry=p4r.TableEntry(table_id=table_id))])]

    async def flow_entries(self, last_hit: bool) -> AsyncIterator[Sequence[p4r.Entity]]:
        """Every flow entry the switch holds, both families, with its direct
        counter and (last_hit: the tables age entries) the time since it was
        last hit, in one Read, a response at a time as it arrives (the
        reconcile decodes meanwhile)."""
        async for batch in self.session.read_batches(flow_read(self.schema, last_hit)):
            yield batch

    async def write(self, updates: list[p4r.Update], what: str) -> None:
        for i in range(0, len(updates), WRITE_BATCH):
            await self.session.write(updates[i:i + WRITE_BATCH], what)


def flow_read(schema: P4Schema, last_hit: bool) -> list[p4r.Entity]:
    """What a read of every flow entry asks for (SwitchControl.flow_entries)."""
    ents = []
    for t in FLOW_TABLES:
        e = p4r.TableEntry(table_id=schema.table(t).id)
        e.counter_data.SetInParent()
        if last_hit:
            e.time_since_last_hit.SetInParent()
        ents.append(p4r.Entity(table_entry=e))
    return ents


def update_for(want: p4r.TableEntry, have: dict[tuple, p4r.TableEntry]) -> p4r.Update | None:
    """What makes the switch hold `want`, given what it holds (the matching
    entry is taken out of `have`): INSERT, MODIFY, or nothing."""
    old = have.pop(entry_key(want), None)
    if old is None:
        return p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=want))
    if action_of(old) != action_of(want):
        return p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(table_entry=want))
    return None


def deletes(left: Iterable[p4r.TableEntry]) -> list[p4r.Update]:
    """DELETEs of the entries nothing wants."""
    return [p4r.Update(type=p4r.Update.DELETE, entity=p4r.Entity(table_entry=_match_only(e))) for e in left]


def action_of(e: p4r.TableEntry) -> tuple:
    """An entry's action, independent of byte padding."""
    a = e.action.action
    return a.action_id, tuple(sorted((p.param_id, int.from_bytes(p.value, "big")) for p in a.params))


def _match_only(e: p4r.TableEntry) -> p4r.TableEntry:
    out = p4r.TableEntry(table_id=e.table_id)
    out.match.extend(e.match)
    return out
