#ifndef P4FT_TNA_CONTROL_P4
#define P4FT_TNA_CONTROL_P4

// The ingress of ../control/flowtable.p4 and ../control/packetio.p4 on
// Tofino. Table, action, parameter and key names are the v1model ones, so
// the controller drives both (its Tofino profile leaves out the checksum
// deltas, which the deparser's checksum units replace).
control FtIngress(inout headers_t hdr,
                  inout tna_metadata_t meta,
                  in ingress_intrinsic_metadata_t ig_intr_md,
                  in ingress_intrinsic_metadata_from_parser_t ig_prsr_md,
                  inout ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md,
                  inout ingress_intrinsic_metadata_for_tm_t ig_tm_md) {

    action nop() {}

    action set_flowtable(FlowtableId_t flowtable_id) {
        meta.flowtable_id = flowtable_id;
    }

    table port_table {
        key = {
            ig_intr_md.ingress_port: exact @name("ingress_port");
        }
        actions = {
            set_flowtable;
            @defaultonly nop;
        }
        const default_action = nop();
        size = PORT_TABLE_SIZE;
    }

    // A hit only records its rewrite (the v1model actions rewrite at once,
    // inside an `if` on the MTU: Tofino's actions have no conditions, and
    // subtract no action data). The MTU check follows the table.
    // Counters 32 bits wide in the chip: the SDE's driver adds them up into
    // 64-bit counts (its periodic counter sync), which is what P4Runtime
    // reads; half the SRAM of 64-bit cells.
    DirectCounter<bit<32>>(CounterType_t.PACKETS_AND_BYTES) flow_table_v4_counter;

    // A TCP header longer than the IP length leaves for it, by its data
    // offset (../control/flowtable.p4's l4_header_len): a range lookup per
    // family on the header fields themselves, beside the flow tables. As
    // arithmetic (data offset x 4, then a comparison of two fields) it needs
    // three more dependent steps, and the program no longer fits 12 stages.
    @hidden
    action tcp_short() {
        meta.malformed = 1;
    }

    @hidden
    table tcp_len_v4 {
        key = {
            hdr.tcp.data_offset_res : ternary;
            hdr.ipv4.total_len      : range;
        }
        actions = { tcp_short; NoAction; }
        const default_action = NoAction();
        size = 16;
        const entries = {
            (0x50 &&& 0xF0, 0 .. 39) : tcp_short();
            (0x60 &&& 0xF0, 0 .. 43) : tcp_short();
            (0x70 &&& 0xF0, 0 .. 47) : tcp_short();
            (0x80 &&& 0xF0, 0 .. 51) : tcp_short();
            (0x90 &&& 0xF0, 0 .. 55) : tcp_short();
            (0xa0 &&& 0xF0, 0 .. 59) : tcp_short();
            (0xb0 &&& 0xF0, 0 .. 63) : tcp_short();
            (0xc0 &&& 0xF0, 0 .. 67) : tcp_short();
            (0xd0 &&& 0xF0, 0 .. 71) : tcp_short();
            (0xe0 &&& 0xF0, 0 .. 75) : tcp_short();
            (0xf0 &&& 0xF0, 0 .. 79) : tcp_short();
        }
    }

    @hidden
    table tcp_len_v6 {
        key = {
            hdr.tcp.data_offset_res : ternary;
            hdr.ipv6.payload_len    : range;
        }
        actions = { tcp_short; NoAction; }
        const default_action = NoAction();
        size = 16;
        const entries = {
            (0x50 &&& 0xF0, 0 .. 19) : tcp_short();
            (0x60 &&& 0xF0, 0 .. 23) : tcp_short();
            (0x70 &&& 0xF0, 0 .. 27) : tcp_short();
            (0x80 &&& 0xF0, 0 .. 31) : tcp_short();
            (0x90 &&& 0xF0, 0 .. 35) : tcp_short();
            (0xa0 &&& 0xF0, 0 .. 39) : tcp_short();
            (0xb0 &&& 0xF0, 0 .. 43) : tcp_short();
            (0xc0 &&& 0xF0, 0 .. 47) : tcp_short();
            (0xd0 &&& 0xF0, 0 .. 51) : tcp_short();
            (0xe0 &&& 0xF0, 0 .. 55) : tcp_short();
            (0xf0 &&& 0xF0, 0 .. 59) : tcp_short();
        }
    }

    @hidden
    action hit_v4(NexthopId_t nexthop_id, bit<16> mtu) {
        meta.hit = 1;
        meta.nexthop_id = nexthop_id;
        meta.mtu = mtu;
    }

    action forward_tcp_v4(NexthopId_t nexthop_id,
                          Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v4_counter.count();
        hit_v4(nexthop_id, mtu);
        meta.nat = 1;
        meta.src_addr4 = src_addr;
        meta.dst_addr4 = dst_addr;
        meta.src_port = src_port;
        meta.dst_port = dst_port;
    }

    action forward_udp_v4(NexthopId_t nexthop_id,
                          Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v4_counter.count();
        hit_v4(nexthop_id, mtu);
        meta.nat = 1;
        meta.src_addr4 = src_addr;
        meta.dst_addr4 = dst_addr;
        meta.src_port = src_port;
        meta.dst_port = dst_port;
    }

    action route_v4(NexthopId_t nexthop_id, bit<16> mtu) {
        flow_table_v4_counter.count();
        hit_v4(nexthop_id, mtu);
    }

    @defaultonly
    action miss() {
        flow_table_v4_counter.count();
    }

    table flow_table_v4 {
        key = {
            ig_intr_md.ingress_port: exact @name("ingress_port");
            hdr.ipv4.src_addr:       exact @name("src_addr");
            hdr.ipv4.dst_addr:       exact @name("dst_addr");
            hdr.ipv4.protocol:       exact @name("l4proto");
            hdr.l4.src_port:         exact @name("src_port");
            hdr.l4.dst_port:         exact @name("dst_port");
        }
        actions = {
            forward_tcp_v4;
            forward_udp_v4;
            route_v4;
            @defaultonly miss;
        }
        const default_action = miss();
        counters = flow_table_v4_counter;
        idle_timeout = true;
        size = FLOW_TABLE_V4_SIZE;
    }

    DirectCounter<bit<32>>(CounterType_t.PACKETS_AND_BYTES) flow_table_v6_counter;

    @hidden
    action hit_v6(NexthopId_t nexthop_id, bit<16> mtu) {
        meta.hit = 1;
        meta.nexthop_id = nexthop_id;
        meta.mtu = mtu;
    }

    action forward_tcp_v6(NexthopId_t nexthop_id,
                          Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v6_counter.count();
        hit_v6(nexthop_id, mtu);
        meta.nat = 1;
        meta.src_addr6 = src_addr;
        meta.dst_addr6 = dst_addr;
        meta.src_port = src_port;
        meta.dst_port = dst_port;
    }

    action forward_udp_v6(NexthopId_t nexthop_id,
                          Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr,
                          L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v6_counter.count();
        hit_v6(nexthop_id, mtu);
        meta.nat = 1;
        meta.src_addr6 = src_addr;
        meta.dst_addr6 = dst_addr;
        meta.src_port = src_port;
        meta.dst_port = dst_port;
    }

    action route_v6(NexthopId_t nexthop_id, bit<16> mtu) {
        flow_table_v6_counter.count();
        hit_v6(nexthop_id, mtu);
    }

    @defaultonly
    action miss_v6() {
        flow_table_v6_counter.count();
    }

    table flow_table_v6 {
        key = {
            ig_intr_md.ingress_port: exact @name("ingress_port");
            hdr.ipv6.src_addr:       exact @name("src_addr");
            hdr.ipv6.dst_addr:       exact @name("dst_addr");
            hdr.ipv6.next_hdr:       exact @name("l4proto");
            hdr.l4.src_port:         exact @name("src_port");
            hdr.l4.dst_port:         exact @name("dst_port");
        }
        actions = {
            forward_tcp_v6;
            forward_udp_v6;
            route_v6;
            @defaultonly miss_v6;
        }
        const default_action = miss_v6();
        counters = flow_table_v6_counter;
        idle_timeout = true;
        size = FLOW_TABLE_V6_SIZE;
    }

    // Where a hit leaves, as ../control/nexthop.p4: the next hop its entry
    // names. A miss (a next hop already gone) is dropped.
    action set_nexthop(PortId_t port, MacAddr_t src_mac, MacAddr_t dst_mac) {
        meta.port = port;
        meta.src_mac = src_mac;
        meta.dst_mac = dst_mac;
    }

    @defaultonly
    action nexthop_miss() {
        ig_dprsr_md.drop_ctl = 1;
    }

    table nexthop_table {
        key = {
            meta.nexthop_id: exact @name("nexthop_id");
        }
        actions = {
            set_nexthop;
            @defaultonly nexthop_miss;
        }
        const default_action = nexthop_miss();
        size = NEXTHOP_TABLE_SIZE;
    }

    // The punt path's meter and drop counter, as in ../control/packetio.p4.
    Meter<PortId_t>(PORT_TABLE_SIZE, MeterType_t.PACKETS) punt_meter;
    Counter<bit<32>, PortId_t>(PORT_TABLE_SIZE, CounterType_t.PACKETS) punt_dropped;

    @hidden
    action punt(PuntReason reason) {
        meta.punt_reason = reason;
    }

    apply {
        ig_tm_md.bypass_egress = 1;
        if (hdr.packet_out.isValid()) {
            // from the controller: out of the port it names, untouched
            ig_tm_md.ucast_egress_port = hdr.packet_out.egress_port;
            hdr.packet_out.setInvalid();
        } else {
            // Lengths that disagree with the headers (a TCP data offset
            // below 5, an IP length shorter than its own headers), one
            // condition at a time: Tofino's gateways take a few bytes each,
            // so "shorter than" is a saturating subtraction (short_by).
            if (hdr.tcp.isValid()) {
                if (hdr.tcp.data_offset_res < 0x50) {
                    meta.malformed = 1;
                }
                if (hdr.ipv4.isValid()) {
                    tcp_len_v4.apply();
                } else {
                    tcp_len_v6.apply();
                }
            } else if (hdr.udp.isValid()) {
                if (hdr.ipv4.isValid()) {
                    meta.short_by = IPV4_HDR_LEN + UDP_HDR_LEN |-| hdr.ipv4.total_len;
                } else {
                    meta.short_by = UDP_HDR_LEN |-| hdr.ipv6.payload_len;
                }
            }
            if (meta.short_by != 0) {
                meta.malformed = 1;
            }
            // The checks of ../control/flowtable.p4, in its order. One
            // difference: TNA's ingress does not know the frame's length, so
            // the MALFORMED check compares the IP length with the headers
            // only, not with the frame (docs/tofino.md).
            if (hdr.ipv4.isValid()) {
                if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
                    if (hdr.ipv4.ihl != 5) {
                        punt(PuntReason.IP_OPTIONS);
                    } else if ((hdr.ipv4.flags_frag & IPV4_FRAG_MASK) != 0) {
                        punt(PuntReason.IP_FRAGMENT);
                    } else {
                        punt(PuntReason.NOT_OFFLOADABLE);
                    }
                } else if (hdr.ipv4.ttl <= 1) {
                    punt(PuntReason.TTL_EXPIRED);
                } else if (hdr.tcp.isValid() && (hdr.tcp.flags & TCP_FLAGS_FIN_RST) != 0) {
                    punt(PuntReason.TCP_FIN_RST);
                } else if (!flow_table_v4.apply().hit) {
                    punt(PuntReason.MISS);
                }
            } else if (hdr.ipv6.isValid()) {
                // the packet's length for the MTU check: payload and the
                // 40-byte header (one operation per action on Tofino)
                meta.ipv6_len = hdr.ipv6.payload_len + IPV6_HDR_LEN;
                if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
                    if (hdr.ipv6.next_hdr == 0 || hdr.ipv6.next_hdr == 43 || hdr.ipv6.next_hdr == 44 ||
                        hdr.ipv6.next_hdr == 60 || hdr.ipv6.next_hdr == 51 || hdr.ipv6.next_hdr == 50) {
                        punt(PuntReason.IP_OPTIONS);
                    } else {
                        punt(PuntReason.NOT_OFFLOADABLE);
                    }
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
            // A packet whose lengths disagree with its headers is punted
            // whatever the lookup found. The v1model program checks before
            // the lookup; here the check runs beside it, so that the flow
            // tables can start in the first stage: such a packet of an
            // offloaded flow counts on its entry (and refreshes its idle
            // time) before it is punted. docs/tofino.md.
            if (meta.malformed == 1) {
                punt(PuntReason.MALFORMED);
            }
            // nf_flow_exceeds_mtu: a saturating subtraction, 0 when it fits
            if (meta.hit == 1) {
                if (hdr.ipv4.isValid()) {
                    meta.oversize = hdr.ipv4.total_len |-| meta.mtu;
                } else {
                    meta.oversize = meta.ipv6_len |-| meta.mtu;
                }
                // not over MALFORMED, which the v1model program finds first
                if (meta.oversize != 0 && meta.malformed == 0) {
                    punt(PuntReason.MTU_EXCEEDED);
                }
            }

            if (meta.punt_reason == PuntReason.NONE) {
                nexthop_table.apply();
                // the hit's rewrite (nf_flow_offload_ip_hook after its checks)
                ig_tm_md.ucast_egress_port = meta.port;
                hdr.ethernet.src_addr = meta.src_mac;
                hdr.ethernet.dst_addr = meta.dst_mac;
                if (hdr.ipv4.isValid()) {
                    hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
                    meta.update_ipv4_csum = 1;
                    if (meta.nat == 1) {
                        hdr.ipv4.src_addr = meta.src_addr4;
                        hdr.ipv4.dst_addr = meta.dst_addr4;
                        hdr.l4.src_port = meta.src_port;
                        hdr.l4.dst_port = meta.dst_port;
                        if (hdr.tcp.isValid()) {
                            meta.update_tcp4_csum = 1;
                        } else if (hdr.udp.checksum != 0) {
                            meta.update_udp4_csum = 1;
                        }
                    }
                } else {
                    hdr.ipv6.hop_limit = hdr.ipv6.hop_limit - 1;
                    if (meta.nat == 1) {
                        hdr.ipv6.src_addr = meta.src_addr6;
                        hdr.ipv6.dst_addr = meta.dst_addr6;
                        hdr.l4.src_port = meta.src_port;
                        hdr.l4.dst_port = meta.dst_port;
                        if (hdr.tcp.isValid()) {
                            meta.update_tcp6_csum = 1;
                        } else if (hdr.udp.checksum != 0) {
                            meta.update_udp6_csum = 1;
                        }
                    }
                }
            } else {
                // a packet from a port bound to no flowtable is reported as such
                if (!port_table.apply().hit) {
                    punt(PuntReason.PORT_UNBOUND);
                }
                if (punt_meter.execute(ig_intr_md.ingress_port) == MeterColor_t.RED) {
                    punt_dropped.count(ig_intr_md.ingress_port);
                    ig_dprsr_md.drop_ctl = 1;
                } else {
                    hdr.packet_in.setValid();
                    hdr.packet_in.ingress_port = ig_intr_md.ingress_port;
                    hdr.packet_in.punt_reason = meta.punt_reason;
                    hdr.packet_in._pad = 0;
                    ig_tm_md.ucast_egress_port = CPU_PORT;
                }
            }
        }
    }
}

#endif
