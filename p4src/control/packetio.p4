#ifndef P4FT_PACKETIO_P4
#define P4FT_PACKETIO_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"
#include "../include/size.p4"

// The colour a meter gives a packet over its peak rate (v1model's trTCM,
// RFC 2698, as BMv2 and the embedded target run it: green 0, yellow 1, red 2)
const bit<2> METER_COLOR_RED = 2;

// Packets from the controller (a valid packet_out header, which only the CPU
// port can carry) go out of the port it names, untouched.
control PacketIoIngress(inout headers_t hdr,
                        inout metadata_t meta,
                        inout standard_metadata_t std_meta) {
    apply {
        std_meta.egress_spec = hdr.packet_out.egress_port;
        hdr.packet_out.setInvalid();
    }
}

// A punted packet (the caller applies this only when punt_reason is set)
// goes to the CPU port with its ingress port and reason, unless its ingress
// port's share of the CPU path is used up: punt_meter, one cell per ingress
// port, which the daemon configures (--punt-rate); a packet it colours red is
// dropped and counted in punt_dropped. A host that floods misses through one
// port then fills that port's share, not the CPU path of every port. A cell
// the daemon never configured colours every packet green.
control PuntIngress(inout headers_t hdr,
                    inout metadata_t meta,
                    inout standard_metadata_t std_meta) {
    meter(PORT_TABLE_SIZE, MeterType.packets) punt_meter;
    counter(PORT_TABLE_SIZE, CounterType.packets) punt_dropped;

    apply {
        bit<2> color;
        punt_meter.execute_meter((bit<32>)std_meta.ingress_port, color);
        if (color == METER_COLOR_RED) {
            punt_dropped.count((bit<32>)std_meta.ingress_port);
            mark_to_drop(std_meta);
        } else {
            hdr.packet_in.setValid();
            hdr.packet_in.ingress_port = std_meta.ingress_port;
            hdr.packet_in.punt_reason = meta.punt_reason;
            hdr.packet_in._pad = 0;
            std_meta.egress_spec = CPU_PORT;
        }
    }
}

#endif
