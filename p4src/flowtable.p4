// p4flowtable: the Linux flowtable fast path on a v1model switch.
// This file only wires the controls together; each job has its own file.
#include <core.p4>
#include <v1model.p4>

#include "include/define.p4"
#include "include/size.p4"
#include "include/header.p4"
#include "include/parser.p4"
#include "include/checksum.p4"
#include "control/packetio.p4"
#include "control/flowtable.p4"
#include "control/nexthop.p4"

control FtIngress(inout headers_t hdr,
                  inout metadata_t meta,
                  inout standard_metadata_t std_meta) {
    apply {
        // meta starts zeroed, punt_reason NONE: simple_switch resets all metadata
        // of every packet it receives (phv->reset_metadata() in receive_),
        // and the embedded target does the same
        if (hdr.packet_out.isValid()) {
            PacketIoIngress.apply(hdr, meta, std_meta);
        } else {
            FlowtableIngress.apply(hdr, meta, std_meta);
            if (meta.punt_reason == PuntReason.NONE) {
                // a hit that fits its route's MTU: out to its next hop
                NexthopIngress.apply(hdr, meta, std_meta);
            } else {
                PuntIngress.apply(hdr, meta, std_meta);
            }
        }
    }
}

control FtEgress(inout headers_t hdr,
                 inout metadata_t meta,
                 inout standard_metadata_t std_meta) {
    apply { }
}

V1Switch(FtParser(),
         FtVerifyChecksum(),
         FtIngress(),
         FtEgress(),
         FtComputeChecksum(),
         FtDeparser()) main;
