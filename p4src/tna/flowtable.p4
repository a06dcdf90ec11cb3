// p4flowtable on Tofino (TNA): the v1model program's behaviour
// (../flowtable.p4) in Tofino's idiom. Shared with it: the headers, the
// punt reasons and constants, the sizes (../include). Tofino's own: the
// parser's intrinsic metadata, checksums by the checksum units (parser.p4),
// and a hit's rewrite kept in metadata until the MTU check has passed
// (control.p4). Where Tofino cannot do what the v1model program does, the
// difference is written where it happens and in docs/tofino.md.
//
// Build: p4c-barefoot --target tofino --arch tna -DP4FT_CPU_PORT=N (make p4);
// for Tofino 2, --target tofino2 --arch t2na.
#include <core.p4>
#if __TARGET_TOFINO__ == 2
#include <t2na.p4>
#else
#include <tna.p4>
#endif

#include "../include/define.p4"
#include "../include/size.p4"
#include "../include/header.p4"

@pa_auto_init_metadata
struct tna_metadata_t {
    FlowtableId_t flowtable_id;
    PuntReason    punt_reason;
    bit<1>        malformed;
    bit<16>       short_by;        // bytes the IP length is short of its headers
    // a hit's rewrite, applied once the MTU check passed
    bit<1>        hit;
    bit<1>        nat;
    NexthopId_t   nexthop_id;      // the next hop the hit names (nexthop_table)
    bit<16>       mtu;             // the route's
    bit<16>       oversize;        // bytes over the route's MTU, 0 when it fits
    bit<16>       ipv6_len;        // an IPv6 packet's length, header included
    PortId_t      port;            // the next hop's port and MACs
    MacAddr_t     src_mac;
    MacAddr_t     dst_mac;
    Ipv4Addr_t    src_addr4;
    Ipv4Addr_t    dst_addr4;
    Ipv6Addr_t    src_addr6;
    Ipv6Addr_t    dst_addr6;
    L4Port_t      src_port;
    L4Port_t      dst_port;
    // checksums: what the parser took out, and what the deparser updates
    bit<16>       ipv4_csum_residual;
    bit<16>       l4_csum_residual;
    // Tofino's deparser takes one-bit conditions only: a flag per update
    bit<1>        update_ipv4_csum;
    bit<1>        update_tcp4_csum;
    bit<1>        update_udp4_csum;
    bit<1>        update_tcp6_csum;
    bit<1>        update_udp6_csum;
}

#include "parser.p4"
#include "control.p4"

parser FtEgressParser(packet_in pkt,
                      out headers_t hdr,
                      out tna_metadata_t meta,
                      out egress_intrinsic_metadata_t eg_intr_md) {
    state start {
        pkt.extract(eg_intr_md);
        transition accept;
    }
}

control FtEgress(inout headers_t hdr,
                 inout tna_metadata_t meta,
                 in egress_intrinsic_metadata_t eg_intr_md,
                 in egress_intrinsic_metadata_from_parser_t eg_prsr_md,
                 inout egress_intrinsic_metadata_for_deparser_t eg_dprsr_md,
                 inout egress_intrinsic_metadata_for_output_port_t eg_oport_md) {
    apply { }
}

control FtEgressDeparser(packet_out pkt,
                         inout headers_t hdr,
                         in tna_metadata_t meta,
                         in egress_intrinsic_metadata_for_deparser_t eg_dprsr_md) {
    apply { }
}

Pipeline(FtIngressParser(), FtIngress(), FtIngressDeparser(),
         FtEgressParser(), FtEgress(), FtEgressDeparser()) pipe;

Switch(pipe) main;
