#ifndef P4FT_PARSER_P4
#define P4FT_PARSER_P4

#include <core.p4>
#include <v1model.p4>
#include "header.p4"

parser FtParser(packet_in pkt,
                out headers_t hdr,
                inout metadata_t meta,
                inout standard_metadata_t std_meta) {
    state start {
        // Only the CPU port may carry a packet_out header: a front port can
        // never inject one.
        transition select(std_meta.ingress_port) {
            CPU_PORT: parse_packet_out;
            default: parse_ethernet;
        }
    }
    state parse_packet_out {
        pkt.extract(hdr.packet_out);
        transition parse_ethernet;
    }
    state parse_ethernet {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default: accept;
        }
    }
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        // L4 only behind a plain header (no options) of an unfragmented
        // packet; the rest is punted by the ingress checks.
        transition select(hdr.ipv4.ihl, hdr.ipv4.flags_frag, hdr.ipv4.protocol) {
            (5, 0 &&& IPV4_FRAG_MASK, IP_PROTO_TCP): parse_tcp;
            (5, 0 &&& IPV4_FRAG_MASK, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }
    state parse_ipv6 {
        pkt.extract(hdr.ipv6);
        // L4 only right behind the fixed header, as nf_flow_tuple_ipv6:
        // extension headers are not walked, the ingress punts them.
        transition select(hdr.ipv6.next_hdr) {
            IP_PROTO_TCP: parse_tcp;
            IP_PROTO_UDP: parse_udp;
            default: accept;
        }
    }
    state parse_tcp {
        pkt.extract(hdr.l4);
        pkt.extract(hdr.tcp);
        transition accept;
    }
    state parse_udp {
        pkt.extract(hdr.l4);
        pkt.extract(hdr.udp);
        transition accept;
    }
}

control FtDeparser(packet_out pkt, in headers_t hdr) {
    apply {
        pkt.emit(hdr.packet_in);
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.ipv6);
        pkt.emit(hdr.l4);
        pkt.emit(hdr.tcp);
        pkt.emit(hdr.udp);
    }
}

#endif
