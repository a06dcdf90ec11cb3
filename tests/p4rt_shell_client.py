#!/usr/bin/env python3
"""Drives a switch with p4runtime-shell (a stock P4Runtime client, run from its
own venv) and prints, as JSON, every answer the switch gave: set pipeline,
insert, read, modify, delete, direct counters, packet-in, the punt meter and
its drop counter, and the error codes for a duplicate and a missing entry.
Frames are sent into the switch's port 1 through the peer of its veth (argv:
GRPC_ADDR P4INFO JSON PEER_IFNAME)."""

import json
import os
import socket
import sys
import time

import p4runtime_sh.shell as sh
from google.rpc import code_pb2
from p4runtime_sh.p4runtime import P4RuntimeWriteException

addr, p4info, config, peer = sys.argv[1:5]
out = {}


def entry_dict(msg) -> dict:
    return {"match": {str(m.field_id): m.exact.value.hex() for m in msg.match},
            "action": msg.action.action.action_id and {str(p.param_id): p.value.hex()
                                                        for p in msg.action.action.params},
            "idle_timeout_ns": msg.idle_timeout_ns}


def read(name, **match) -> list:
    te = sh.TableEntry(name)
    for k, v in match.items():
        te.match[k] = v
    return [entry_dict(e.msg()) for e in te.read()]


def code_of(fn) -> str:
    """The canonical code of each failed update (spec: the batch fails with
    UNKNOWN, the details carry each update's p4.v1.Error)."""
    try:
        fn()
    except P4RuntimeWriteException as e:
        return ",".join(sorted({code_pb2.Code.Name(err.canonical_code) for _, err in e.errors}))
    except Exception as e:     # a server that answers otherwise than the spec says
        return f"{type(e).__name__}: {e}"
    return "OK"


try:
    sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1), config=sh.FwdPipeConfig(p4info, config))
    out["pipeline_cookie_set"] = True

    port = sh.TableEntry("FtIngress.FlowtableIngress.port_table")(action="FtIngress.FlowtableIngress.set_flowtable")
    port.match["ingress_port"] = "1"
    port.action["flowtable_id"] = "1"
    port.insert()
    out["port_entry"] = read("FtIngress.FlowtableIngress.port_table")

    nh = sh.TableEntry("FtIngress.NexthopIngress.nexthop_table")(action="FtIngress.NexthopIngress.set_nexthop")
    nh.match["nexthop_id"] = "7"
    for k, v in (("port", "2"), ("src_mac", "02:00:00:00:02:01"), ("dst_mac", "02:00:00:00:00:02")):
        nh.action[k] = v
    nh.insert()
    out["nexthop_entry"] = read("FtIngress.NexthopIngress.nexthop_table")

    fl = sh.TableEntry("FtIngress.FlowtableIngress.flow_table_v4")(action="FtIngress.FlowtableIngress.route_v4")
    for k, v in (("ingress_port", "1"), ("src_addr", "10.0.1.1"), ("dst_addr", "192.0.2.2"), ("l4proto", "17"),
                 ("src_port", "40000"), ("dst_port", "53")):
        fl.match[k] = v
    for k, v in (("nexthop_id", "7"), ("mtu", "1500")):
        fl.action[k] = v
    fl.insert()
    out["flow_entry"] = read("FtIngress.FlowtableIngress.flow_table_v4")
    out["duplicate_insert"] = code_of(fl.insert)

    fl.action["mtu"] = "1400"
    fl.modify()
    out["after_modify"] = read("FtIngress.FlowtableIngress.flow_table_v4")

    # a frame of the flow into port 1: forwarded, counted by the entry's direct counter
    eth = bytes.fromhex("020000000001" "020000000002" "0800")
    ip = bytes.fromhex("45000020" "00004000" "4011" "0000" "0a000101" "c0000202")
    udp = (40000).to_bytes(2, "big") + (53).to_bytes(2, "big") + bytes.fromhex("000c0000") + b"p4ft"
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((peer, 0))
    for _ in range(3):
        tx.send(eth + ip + udp)
    counted = None
    end = time.time() + 10
    while time.time() < end:
        c = sh.DirectCounterEntry("FtIngress.FlowtableIngress.flow_table_v4_counter")
        got = [(e.msg().data.packet_count, e.msg().data.byte_count) for e in c.read()]
        if got and got[0][0] >= 3:
            counted = got
            break
        time.sleep(0.1)
    out["direct_counter"] = counted

    # a miss: punted to the CPU port and delivered as a PacketIn
    miss = eth + ip[:12] + bytes.fromhex("0a000101" "c6336401") + udp
    pins = []
    sniffer = sh.PacketIn()
    tx.send(miss)
    for p in sniffer.sniff(timeout=3):
        pins.append({"payload": p.packet.payload.hex(),
                     "metadata": {str(m.metadata_id): m.value.hex() for m in p.packet.metadata}})
    out["packet_in"] = pins

    # the punt meter: port 1's cell at 1 packet/s, burst 2, read back; then
    # five more misses from port 1: two punted, three dropped and counted
    m = sh.MeterEntry("FtIngress.PuntIngress.punt_meter")
    m.index = 1
    m.cir, m.cburst, m.pir, m.pburst = 1, 2, 1, 2
    m.modify()
    got = sh.MeterEntry("FtIngress.PuntIngress.punt_meter")
    got.index = 1
    out["meter"] = [[e.msg().index.index, e.msg().config.cir, e.msg().config.cburst, e.msg().config.pir,
                     e.msg().config.pburst] for e in got.read()]
    # (the same sniffer: each PacketIn() starts a reader thread of its own
    # that takes packet-ins from the shell's one queue, and never stops)
    for _ in range(5):
        tx.send(miss)
    out["metered_packet_in"] = len(list(sniffer.sniff(timeout=3)))
    dropped = sh.CounterEntry("FtIngress.PuntIngress.punt_dropped")
    dropped.index = 1
    out["punt_dropped"] = [e.msg().data.packet_count for e in dropped.read()]

    fl.delete()
    out["after_delete"] = read("FtIngress.FlowtableIngress.flow_table_v4")
    out["missing_delete"] = code_of(fl.delete)
    print(json.dumps(out, sort_keys=True))
finally:
    sh.teardown()
    sys.stdout.flush()
    os._exit(0 if "missing_delete" in out else 1)   # the shell's stream thread would keep it alive
