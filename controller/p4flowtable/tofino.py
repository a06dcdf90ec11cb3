"""The Tofino target profile (`p4ft daemon --target tofino`).

The program is p4src/tna (built by `make p4` into p4src/build/tofino): its
P4Info names are the v1model program's, so the daemon drives it as it
drives BMv2, except that its flow actions carry no checksum deltas (the
deparser's checksum units update the checksums; ip.COMPUTED_BY_SWITCH).

What the SDE's P4Runtime server (open-p4studio, bf-drivers/src/pi/pi_imp.c,
_pi_update_device_start) reads from SetForwardingPipelineConfig's
p4_device_config, in this order, each length a 32-bit little-endian
integer (PI's retrieve_uint32 on x86):

    len, program name (at most 100 bytes)
    len, the chip binary (tofino.bin)
    len, the context JSON
    len, the pipeline name (at most 100 bytes; 0: no BF Runtime JSON follows)
    len, the BF Runtime JSON

wrapped, as the SDE's own p4runtime_update_config.py sends it, in a
p4.tmp.P4DeviceConfig's device_data (PI's frontend unwraps it; raw bytes
that happen to parse as that message would be misread).
"""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "p4src" / "build" / "tofino"
PROGRAM = "flowtable"
PIPELINE = "pipe"          # the TNA Pipeline instance's name
MAX_NAME = 100             # _PI_UPDATE_MAX_NAME_SIZE


@dataclass(frozen=True)
class TofinoBuild:
    """The committed build: its P4Info, and what goes into the device config."""
    directory: Path = BUILD

    @property
    def p4info(self) -> Path:
        return self.directory / "flowtable.p4info.txtpb"

    @property
    def info(self) -> dict:
        """CPU port and table sizes the build was compiled with (build.json)."""
        return json.loads((self.directory / "build.json").read_text())

    def device_config(self) -> bytes:
        d = self.directory
        return device_config(PROGRAM, gzip.decompress((d / "tofino.bin.gz").read_bytes()),
                             gzip.decompress((d / "context.json.gz").read_bytes()),
                             PIPELINE, (d / "bf-rt.json").read_bytes())


def _chunk(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def device_data(program: str, binary: bytes, context: bytes, pipeline: str = "", bfrt: bytes = b"") -> bytes:
    """The bytes _pi_update_device_start walks."""
    name, pipe = program.encode(), pipeline.encode()
    if not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"program name must be 1 to {MAX_NAME} bytes, not {len(name)}")
    if len(pipe) > MAX_NAME:
        raise ValueError(f"pipeline name must be at most {MAX_NAME} bytes, not {len(pipe)}")
    if bfrt and not pipe:
        raise ValueError("a BF Runtime JSON needs its pipeline's name")
    out = _chunk(name) + _chunk(binary) + _chunk(context) + _chunk(pipe)
    return out + _chunk(bfrt) if pipe else out


def _p4_device_config_class():
    """p4.tmp.P4DeviceConfig (PI's proto/p4/tmp/p4config.proto), built from
    its descriptor: the p4runtime package does not ship it."""
    f = descriptor_pb2.FileDescriptorProto(name="p4ft/p4/tmp/p4config.proto", package="p4.tmp", syntax="proto3")
    m = f.message_type.add(name="P4DeviceConfig")
    extras = m.nested_type.add(name="Extras")
    kv = extras.nested_type.add(name="KvEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    FD = descriptor_pb2.FieldDescriptorProto
    kv.field.add(name="key", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    kv.field.add(name="value", number=2, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    extras.field.add(name="kv", number=1, type=FD.TYPE_MESSAGE, label=FD.LABEL_REPEATED,
                     type_name=".p4.tmp.P4DeviceConfig.Extras.KvEntry")
    m.field.add(name="reassign", number=1, type=FD.TYPE_BOOL, label=FD.LABEL_OPTIONAL)
    m.field.add(name="extras", number=2, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                type_name=".p4.tmp.P4DeviceConfig.Extras")
    m.field.add(name="device_data", number=3, type=FD.TYPE_BYTES, label=FD.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("p4.tmp.P4DeviceConfig"))


P4DeviceConfig = _p4_device_config_class()


def device_config(program: str, binary: bytes, context: bytes, pipeline: str = PIPELINE,
                  bfrt: bytes = b"") -> bytes:
    """ForwardingPipelineConfig.p4_device_config for the SDE's P4Runtime server."""
    return P4DeviceConfig(device_data=device_data(program, binary, context, pipeline, bfrt)).SerializeToString()
