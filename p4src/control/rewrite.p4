#ifndef P4FT_REWRITE_P4
#define P4FT_REWRITE_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"

// One place applies what the lookup decided: NAT addresses and ports, TTL,
// next-hop MACs, egress port. The TCP/UDP checksum is updated incrementally,
// as the kernel's inet_proto_csum_replace4/2 does, so a packet whose L4
// checksum arrived wrong leaves exactly as wrong as the kernel would send it.
control ApplyRewrites(inout headers_t hdr,
                      inout metadata_t meta,
                      inout standard_metadata_t std_meta) {

    bit<32> sum;
    bit<16> csum;

    apply {
        if (meta.rw.apply) {
            if (hdr.tcp.isValid()) {
                csum = hdr.tcp.checksum;
            } else {
                csum = hdr.udp.checksum;
            }
            // One's-complement sum of ~csum, ~old and new words (RFC 1624
            // eqn. 3); unchanged words cancel out. The addresses are in the
            // pseudo-header of both families.
            sum = (bit<32>)(~csum)
                + (bit<32>)(~meta.l4_src_port) + (bit<32>)meta.rw.src_port
                + (bit<32>)(~meta.l4_dst_port) + (bit<32>)meta.rw.dst_port;
            if (hdr.ipv6.isValid()) {
                sum = sum
                    + (bit<32>)(~hdr.ipv6.src_addr[127:112]) + (bit<32>)meta.rw.src_addr6[127:112]
                    + (bit<32>)(~hdr.ipv6.src_addr[111:96])  + (bit<32>)meta.rw.src_addr6[111:96]
                    + (bit<32>)(~hdr.ipv6.src_addr[95:80])   + (bit<32>)meta.rw.src_addr6[95:80]
                    + (bit<32>)(~hdr.ipv6.src_addr[79:64])   + (bit<32>)meta.rw.src_addr6[79:64]
                    + (bit<32>)(~hdr.ipv6.src_addr[63:48])   + (bit<32>)meta.rw.src_addr6[63:48]
                    + (bit<32>)(~hdr.ipv6.src_addr[47:32])   + (bit<32>)meta.rw.src_addr6[47:32]
                    + (bit<32>)(~hdr.ipv6.src_addr[31:16])   + (bit<32>)meta.rw.src_addr6[31:16]
                    + (bit<32>)(~hdr.ipv6.src_addr[15:0])    + (bit<32>)meta.rw.src_addr6[15:0];
                sum = (sum & 0xffff) + (sum >> 16);
                sum = sum
                    + (bit<32>)(~hdr.ipv6.dst_addr[127:112]) + (bit<32>)meta.rw.dst_addr6[127:112]
                    + (bit<32>)(~hdr.ipv6.dst_addr[111:96])  + (bit<32>)meta.rw.dst_addr6[111:96]
                    + (bit<32>)(~hdr.ipv6.dst_addr[95:80])   + (bit<32>)meta.rw.dst_addr6[95:80]
                    + (bit<32>)(~hdr.ipv6.dst_addr[79:64])   + (bit<32>)meta.rw.dst_addr6[79:64]
                    + (bit<32>)(~hdr.ipv6.dst_addr[63:48])   + (bit<32>)meta.rw.dst_addr6[63:48]
                    + (bit<32>)(~hdr.ipv6.dst_addr[47:32])   + (bit<32>)meta.rw.dst_addr6[47:32]
                    + (bit<32>)(~hdr.ipv6.dst_addr[31:16])   + (bit<32>)meta.rw.dst_addr6[31:16]
                    + (bit<32>)(~hdr.ipv6.dst_addr[15:0])    + (bit<32>)meta.rw.dst_addr6[15:0];
            } else {
                sum = sum
                    + (bit<32>)(~hdr.ipv4.src_addr[31:16]) + (bit<32>)meta.rw.src_addr[31:16]
                    + (bit<32>)(~hdr.ipv4.src_addr[15:0])  + (bit<32>)meta.rw.src_addr[15:0]
                    + (bit<32>)(~hdr.ipv4.dst_addr[31:16]) + (bit<32>)meta.rw.dst_addr[31:16]
                    + (bit<32>)(~hdr.ipv4.dst_addr[15:0])  + (bit<32>)meta.rw.dst_addr[15:0];
            }
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            csum = ~sum[15:0];

            if (hdr.tcp.isValid()) {
                hdr.tcp.checksum = csum;
                hdr.tcp.src_port = meta.rw.src_port;
                hdr.tcp.dst_port = meta.rw.dst_port;
            } else {
                // A zero UDP checksum means "none" and stays zero; a computed
                // zero is sent as 0xffff (CSUM_MANGLED_0), as the kernel does.
                if (hdr.udp.checksum != 0) {
                    if (csum == 0) {
                        csum = 0xffff;
                    }
                    hdr.udp.checksum = csum;
                }
                hdr.udp.src_port = meta.rw.src_port;
                hdr.udp.dst_port = meta.rw.dst_port;
            }
            if (hdr.ipv6.isValid()) {
                hdr.ipv6.src_addr = meta.rw.src_addr6;
                hdr.ipv6.dst_addr = meta.rw.dst_addr6;
                hdr.ipv6.hop_limit = hdr.ipv6.hop_limit - 1;
            } else {
                hdr.ipv4.src_addr = meta.rw.src_addr;
                hdr.ipv4.dst_addr = meta.rw.dst_addr;
                hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
            }
            hdr.ethernet.src_addr = meta.rw.src_mac;
            hdr.ethernet.dst_addr = meta.rw.dst_mac;
            std_meta.egress_spec = meta.rw.port;
        }
    }
}

#endif
