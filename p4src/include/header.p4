#ifndef P4FT_HEADER_P4
#define P4FT_HEADER_P4

#include "define.p4"

@controller_header("packet_in")
header packet_in_t {
    PortId_t   ingress_port;
    PuntReason punt_reason;
    bit<7>     _pad;
}

@controller_header("packet_out")
header packet_out_t {
    PortId_t egress_port;
    bit<7>   _pad;
}

header ethernet_t {
    MacAddr_t dst_addr;
    MacAddr_t src_addr;
    bit<16>   ether_type;
}

header ipv4_t {
    bit<4>     version;
    bit<4>     ihl;
    bit<8>     diffserv;
    bit<16>    total_len;
    bit<16>    identification;
    // reserved, DF, MF and the fragment offset: only "MF or offset" is
    // ever asked (IPV4_FRAG_MASK), and one field extracts faster than four
    bit<16>    flags_frag;
    bit<8>     ttl;
    bit<8>     protocol;
    bit<16>    hdr_checksum;
    Ipv4Addr_t src_addr;
    Ipv4Addr_t dst_addr;
}

header ipv6_t {
    bit<4>     version;
    bit<8>     traffic_class;
    bit<20>    flow_label;
    bit<16>    payload_len;
    bit<8>     next_hdr;
    bit<8>     hop_limit;
    Ipv6Addr_t src_addr;
    Ipv6Addr_t dst_addr;
}

// The first four bytes of TCP and UDP alike: the lookup key reads the ports
// here for both, as nf_flow_tuple_ip reads them through one struct.
header l4_ports_t {
    L4Port_t src_port;
    L4Port_t dst_port;
}

// TCP after its ports. Only FIN and RST of the flags are ever asked
// (TCP_FLAGS_FIN_RST), so the flags are one field.
header tcp_t {
    bit<32>  seq_no;
    bit<32>  ack_no;
    bit<8>   data_offset_res;
    bit<8>   flags;
    bit<16>  window;
    bit<16>  checksum;
    bit<16>  urgent_ptr;
}

// UDP after its ports.
header udp_t {
    bit<16>  length;
    bit<16>  checksum;
}

struct headers_t {
    packet_in_t  packet_in;
    packet_out_t packet_out;
    ethernet_t   ethernet;
    ipv4_t       ipv4;
    ipv6_t       ipv6;
    l4_ports_t   l4;
    tcp_t        tcp;
    udp_t        udp;
}

struct metadata_t {
    FlowtableId_t flowtable_id;
    PuntReason    punt_reason;
    NexthopId_t   nexthop_id;      // a fitting hit's next hop (nexthop_table)
}

#endif
