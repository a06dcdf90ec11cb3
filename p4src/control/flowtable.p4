#ifndef P4FT_FLOWTABLE_P4
#define P4FT_FLOWTABLE_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"
#include "../include/size.p4"

// The fast path of net/netfilter/nf_flow_table_ip.c for IPv4 and IPv6
// (nf_flow_offload_ip_hook, nf_flow_offload_ipv6_hook): build the tuple, look
// it up, and on a hit record the rewrites; every case the kernel hands to the
// slow path is punted instead.
control FlowtableIngress(inout headers_t hdr,
                         inout metadata_t meta,
                         inout standard_metadata_t std_meta) {

    @hidden
    action punt(PuntReason reason) {
        meta.punt_reason = reason;
    }

    action nop() {}

    // Binds a front port to a flowtable (the flowtable's `devices`). Only a
    // punted packet asks it, to tell "no flowtable here" from the other
    // reasons: flow entries carry their ingress port (the kernel's tuple has
    // iifidx) and exist only for bound ports, so a hit needs no port check.
    action set_flowtable(FlowtableId_t flowtable_id) {
        meta.flowtable_id = flowtable_id;
    }

    table port_table {
        key = {
            std_meta.ingress_port: exact @name("ingress_port");
        }
        actions = {
            set_flowtable;
            @defaultonly nop;
        }
        const default_action = nop();
        size = PORT_TABLE_SIZE;
    }

    // The parts of a hit's rewrite (nf_flow_offload_ip_hook after its
    // lookup), composed by the forward actions below. NAT comes from the
    // other direction's tuple, as in the kernel; the checksum deltas are
    // constants of the entry (the controller computes them), so a packet
    // costs one subtraction and one comparison per checksum (CSUM_UPDATE),
    // not a sum over every changed word. Where the packet goes (port and
    // MACs) is the next hop's, named by the entry (control/nexthop.p4): the
    // kernel's flow keeps its route and resolves the neighbour per packet
    // (neigh_xmit), so a neighbour's new MAC is one next-hop write here. The
    // MTU is the route's, kept per entry as the kernel keeps it per tuple
    // (flow_offload_tuple.mtu).

    // nf_flow_exceeds_mtu. The forward actions below test the same
    // condition again for their rewrite instead of reading the reason back:
    // p4c turns an if inside an action into a select on every write, and a
    // select on this comparison is cheaper than one on the reason.
    @hidden
    action check_mtu(bool oversize) {
        meta.punt_reason = oversize ? PuntReason.MTU_EXCEEDED : PuntReason.NONE;
    }

    @hidden
    action rewrite_ipv4(Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr, bit<16> ip_csum_delta) {
        hdr.ipv4.src_addr = src_addr;
        hdr.ipv4.dst_addr = dst_addr;
        hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
        // the addresses and ip_decrease_ttl in one delta
        hdr.ipv4.hdr_checksum = CSUM_UPDATE(hdr.ipv4.hdr_checksum, ip_csum_delta);
    }

    @hidden
    action rewrite_ipv6(Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr) {
        hdr.ipv6.src_addr = src_addr;
        hdr.ipv6.dst_addr = dst_addr;
        hdr.ipv6.hop_limit = hdr.ipv6.hop_limit - 1;
    }

    // inet_proto_csum_replace4/2: a packet whose checksum arrived wrong leaves
    // exactly as wrong as the kernel would send it
    @hidden
    action rewrite_tcp(L4Port_t src_port, L4Port_t dst_port, bit<16> l4_csum_delta) {
        hdr.l4.src_port = src_port;
        hdr.l4.dst_port = dst_port;
        hdr.tcp.checksum = CSUM_UPDATE(hdr.tcp.checksum, l4_csum_delta);
    }

    // A zero UDP checksum means "none" and stays zero; a computed zero is
    // sent as 0xffff (CSUM_MANGLED_0), as nf_flow_nat_ip_udp does.
    @hidden
    action rewrite_udp(L4Port_t src_port, L4Port_t dst_port, bit<16> l4_csum_delta) {
        hdr.l4.src_port = src_port;
        hdr.l4.dst_port = dst_port;
        if (hdr.udp.checksum != 0) {
            hdr.udp.checksum = CSUM_UPDATE(hdr.udp.checksum, l4_csum_delta);
            if (hdr.udp.checksum == 0) {
                hdr.udp.checksum = 0xffff;
            }
        }
    }

    direct_counter(CounterType.packets_and_bytes) flow_table_v4_counter;

    // One direction of an offloaded TCP or UDP flow over IPv4 (the entry's
    // l4proto picks the action). MTU first, then the rewrite.
    action forward_tcp_v4(NexthopId_t nexthop_id,
                          Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu,
                          bit<16> ip_csum_delta, bit<16> l4_csum_delta) {
        flow_table_v4_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv4.total_len > mtu);
        if (hdr.ipv4.total_len <= mtu) {
            rewrite_ipv4(src_addr, dst_addr, ip_csum_delta);
            rewrite_tcp(src_port, dst_port, l4_csum_delta);
        }
    }

    action forward_udp_v4(NexthopId_t nexthop_id,
                          Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu,
                          bit<16> ip_csum_delta, bit<16> l4_csum_delta) {
        flow_table_v4_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv4.total_len > mtu);
        if (hdr.ipv4.total_len <= mtu) {
            rewrite_ipv4(src_addr, dst_addr, ip_csum_delta);
            rewrite_udp(src_port, dst_port, l4_csum_delta);
        }
    }

    // A flow without NAT: the kernel's nf_flow_nat_ip rewrites nothing
    // unless the flow has NF_FLOW_SNAT or NF_FLOW_DNAT, so the packet only
    // loses a TTL and gets the next hop's MACs. TCP and UDP alike.
    action route_v4(NexthopId_t nexthop_id, bit<16> mtu) {
        flow_table_v4_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv4.total_len > mtu);
        if (hdr.ipv4.total_len <= mtu) {
            hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
            hdr.ipv4.hdr_checksum = CSUM_UPDATE(hdr.ipv4.hdr_checksum, TTL_DECREMENT_DELTA);
        }
    }

    @defaultonly
    action miss() {
        flow_table_v4_counter.count();
    }

    direct_counter(CounterType.packets_and_bytes) flow_table_v6_counter;

    // The IPv6 twins (nf_flow_offload_ipv6_hook): 128-bit addresses, hop
    // limit, no header checksum; the MTU check is on the IPv6 packet length.
    action forward_tcp_v6(NexthopId_t nexthop_id,
                          Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu,
                          bit<16> l4_csum_delta) {
        flow_table_v6_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv6.payload_len + 40 > mtu);
        if (hdr.ipv6.payload_len + 40 <= mtu) {
            rewrite_ipv6(src_addr, dst_addr);
            rewrite_tcp(src_port, dst_port, l4_csum_delta);
        }
    }

    action forward_udp_v6(NexthopId_t nexthop_id,
                          Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu,
                          bit<16> l4_csum_delta) {
        flow_table_v6_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv6.payload_len + 40 > mtu);
        if (hdr.ipv6.payload_len + 40 <= mtu) {
            rewrite_ipv6(src_addr, dst_addr);
            rewrite_udp(src_port, dst_port, l4_csum_delta);
        }
    }

    action route_v6(NexthopId_t nexthop_id, bit<16> mtu) {
        flow_table_v6_counter.count();
        meta.nexthop_id = nexthop_id;
        check_mtu(hdr.ipv6.payload_len + 40 > mtu);
        if (hdr.ipv6.payload_len + 40 <= mtu) {
            hdr.ipv6.hop_limit = hdr.ipv6.hop_limit - 1;
        }
    }

    @defaultonly
    action miss_v6() {
        flow_table_v6_counter.count();
    }

    table flow_table_v6 {
        key = {
            std_meta.ingress_port: exact @name("ingress_port");
            hdr.ipv6.src_addr:     exact @name("src_addr");
            hdr.ipv6.dst_addr:     exact @name("dst_addr");
            hdr.ipv6.next_hdr:     exact @name("l4proto");
            hdr.l4.src_port:       exact @name("src_port");
            hdr.l4.dst_port:       exact @name("dst_port");
        }
        actions = {
            forward_tcp_v6;
            forward_udp_v6;
            route_v6;
            @defaultonly miss_v6;
        }
        const default_action = miss_v6();
        counters = flow_table_v6_counter;
        support_timeout = true;
        size = FLOW_TABLE_V6_SIZE;
    }

    table flow_table_v4 {
        key = {
            std_meta.ingress_port: exact @name("ingress_port");
            hdr.ipv4.src_addr:     exact @name("src_addr");
            hdr.ipv4.dst_addr:     exact @name("dst_addr");
            hdr.ipv4.protocol:     exact @name("l4proto");
            hdr.l4.src_port:       exact @name("src_port");
            hdr.l4.dst_port:       exact @name("dst_port");
        }
        actions = {
            forward_tcp_v4;
            forward_udp_v4;
            route_v4;
            @defaultonly miss;
        }
        const default_action = miss();
        counters = flow_table_v4_counter;
        // Entries may carry idle_timeout_ns; the switch then notifies idle
        // entries itself instead of the controller polling every counter.
        support_timeout = true;
        size = FLOW_TABLE_V4_SIZE;
    }

    // Bytes of the transport header the packet claims: TCP's data offset,
    // UDP's fixed 8. A TCP data offset below 5 is caught by its own check.
    @hidden
    action l4_header_len(out bit<16> len) {
        len = hdr.tcp.isValid() ? (bit<16>)(hdr.tcp.data_offset_res >> 4) << 2 : UDP_HDR_LEN;
    }

    // The kernel checks FIN/RST (nf_flow_state_check) after the lookup and
    // the MTU; here it comes before the lookup, so that a hit's action can
    // rewrite the packet at once. Such packets leave the fast path either
    // way, and as in the kernel they neither refresh nor count on the flow
    // (the kernel's check precedes flow_offload_refresh and the accounting).
    // A packet whose lengths disagree with its frame (total length past the
    // frame's end, or too short for its own headers) or with itself (TCP data
    // offset < 5) is never rewritten: the kernel's receive path drops such
    // packets (ip_rcv_core, ipv6_rcv; tcp_v4_rcv for the data offset), so it
    // is punted for the kernel to judge. Padding past the total length, as
    // on a minimum-size Ethernet frame, is fine.
    apply {
        bit<16> l4_len;
        l4_header_len(l4_len);
        // IPv4 first: the common case meets the fewest conditions
        if (hdr.ipv4.isValid()) {
            if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
                // The parser reads TCP/UDP only behind a plain header of an
                // unfragmented packet, so a packet with either is neither.
                if (hdr.ipv4.ihl != 5) {
                    punt(PuntReason.IP_OPTIONS);
                } else if ((hdr.ipv4.flags_frag & IPV4_FRAG_MASK) != 0) {
                    punt(PuntReason.IP_FRAGMENT);
                } else {
                    punt(PuntReason.NOT_OFFLOADABLE);
                }
            } else if ((bit<32>)hdr.ipv4.total_len + ETH_HDR_LEN > std_meta.packet_length ||
                       hdr.ipv4.total_len < IPV4_HDR_LEN + l4_len ||
                       (hdr.tcp.isValid() && hdr.tcp.data_offset_res < 0x50)) {
                punt(PuntReason.MALFORMED);
            } else if (hdr.ipv4.ttl <= 1) {
                punt(PuntReason.TTL_EXPIRED);
            } else if (hdr.tcp.isValid() && (hdr.tcp.flags & TCP_FLAGS_FIN_RST) != 0) {
                punt(PuntReason.TCP_FIN_RST);
            } else if (!flow_table_v4.apply().hit) {
                punt(PuntReason.MISS);
            }
        } else if (hdr.ipv6.isValid()) {
            if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
                if (hdr.ipv6.next_hdr == 0 || hdr.ipv6.next_hdr == 43 || hdr.ipv6.next_hdr == 44 ||
                    hdr.ipv6.next_hdr == 60 || hdr.ipv6.next_hdr == 51 || hdr.ipv6.next_hdr == 50) {
                    // hop-by-hop, routing, fragment, destination options, AH, ESP
                    punt(PuntReason.IP_OPTIONS);
                } else {
                    punt(PuntReason.NOT_OFFLOADABLE);
                }
            } else if ((bit<32>)hdr.ipv6.payload_len + (bit<32>)IPV6_HDR_LEN + ETH_HDR_LEN > std_meta.packet_length ||
                       hdr.ipv6.payload_len < l4_len ||
                       (hdr.tcp.isValid() && hdr.tcp.data_offset_res < 0x50)) {
                punt(PuntReason.MALFORMED);
            } else if (hdr.ipv6.hop_limit <= 1) {
                punt(PuntReason.TTL_EXPIRED);
            } else if (hdr.tcp.isValid() && (hdr.tcp.flags & TCP_FLAGS_FIN_RST) != 0) {
                punt(PuntReason.TCP_FIN_RST);
            } else if (!flow_table_v6.apply().hit) {
                punt(PuntReason.MISS);
            }
        } else {
            punt(PuntReason.NOT_OFFLOADABLE);
        }
        // Whatever the reason, a packet from a port bound to no flowtable
        // is reported as such: the kernel never saw it at a flowtable hook.
        if (meta.punt_reason != PuntReason.NONE) {
            if (!port_table.apply().hit) {
                punt(PuntReason.PORT_UNBOUND);
            }
        }
    }
}

#endif
