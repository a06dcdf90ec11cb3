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
    bit<1>     reserved;
    bit<1>     dont_fragment;
    bit<1>     more_fragments;
    bit<13>    frag_offset;
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

header tcp_t {
    L4Port_t src_port;
    L4Port_t dst_port;
    bit<32>  seq_no;
    bit<32>  ack_no;
    bit<4>   data_offset;
    bit<4>   res;
    bit<1>   cwr;
    bit<1>   ece;
    bit<1>   urg;
    bit<1>   ack;
    bit<1>   psh;
    bit<1>   rst;
    bit<1>   syn;
    bit<1>   fin;
    bit<16>  window;
    bit<16>  checksum;
    bit<16>  urgent_ptr;
}

header udp_t {
    L4Port_t src_port;
    L4Port_t dst_port;
    bit<16>  length;
    bit<16>  checksum;
}

struct headers_t {
    packet_in_t  packet_in;
    packet_out_t packet_out;
    ethernet_t   ethernet;
    ipv4_t       ipv4;
    ipv6_t       ipv6;
    tcp_t        tcp;
    udp_t        udp;
}

struct metadata_t {
    FlowtableId_t flowtable_id;
    // Lookup key built once (the kernel's nf_flow_tuple_ip).
    L4Port_t      l4_src_port;
    L4Port_t      l4_dst_port;
    bool          punt;
    PuntReason    punt_reason;
}

#endif
