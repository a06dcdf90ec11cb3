#ifndef P4FT_REWRITE_P4
#define P4FT_REWRITE_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"

// The transport half of a hit's rewrite: NAT ports and the checksum, updated
// by the entry's delta as the kernel's inet_proto_csum_replace4/2 do, so a
// packet whose L4 checksum arrived wrong leaves exactly as wrong as the
// kernel would send it. Runs only for hits that stay on the fast path.
control RewriteL4(inout headers_t hdr,
                  inout metadata_t meta,
                  inout standard_metadata_t std_meta) {
    apply {
        if (hdr.tcp.isValid()) {
            hdr.tcp.src_port = meta.rw_src_port;
            hdr.tcp.dst_port = meta.rw_dst_port;
            hdr.tcp.checksum = CSUM_UPDATE(hdr.tcp.checksum, meta.l4_csum_delta);
        } else {
            hdr.udp.src_port = meta.rw_src_port;
            hdr.udp.dst_port = meta.rw_dst_port;
            // A zero UDP checksum means "none" and stays zero; a computed
            // zero is sent as 0xffff (CSUM_MANGLED_0), as the kernel does.
            if (hdr.udp.checksum != 0) {
                hdr.udp.checksum = CSUM_UPDATE(hdr.udp.checksum, meta.l4_csum_delta);
                if (hdr.udp.checksum == 0) {
                    hdr.udp.checksum = 0xffff;
                }
            }
        }
    }
}

#endif
