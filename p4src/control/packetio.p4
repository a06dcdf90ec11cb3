#ifndef P4FT_PACKETIO_P4
#define P4FT_PACKETIO_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"

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
// goes to the CPU port with its ingress port and reason.
control PuntIngress(inout headers_t hdr,
                    inout metadata_t meta,
                    inout standard_metadata_t std_meta) {
    apply {
        hdr.packet_in.setValid();
        hdr.packet_in.ingress_port = std_meta.ingress_port;
        hdr.packet_in.punt_reason = meta.punt_reason;
        hdr.packet_in._pad = 0;
        std_meta.egress_spec = CPU_PORT;
    }
}

#endif
