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
        meta.punt = true;
        meta.punt_reason = reason;
    }

    action nop() {}

    // Binds a front port to a flowtable (the flowtable's `devices`).
    action set_flowtable(FlowtableId_t flowtable_id) {
        meta.port_bound = true;
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

    direct_counter(CounterType.packets_and_bytes) flow_table_v4_counter;

    // One direction of an offloaded flow. The NAT rewrite comes from the
    // other direction's tuple, as in the kernel.
    action forward_v4(PortId_t port, MacAddr_t src_mac, MacAddr_t dst_mac,
                      Ipv4Addr_t src_addr, Ipv4Addr_t dst_addr,
                      L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v4_counter.count();
        meta.rw.port = port;
        meta.rw.src_mac = src_mac;
        meta.rw.dst_mac = dst_mac;
        meta.rw.src_addr = src_addr;
        meta.rw.dst_addr = dst_addr;
        meta.rw.src_port = src_port;
        meta.rw.dst_port = dst_port;
        meta.rw.mtu = mtu;
    }

    @defaultonly
    action miss() {
        flow_table_v4_counter.count();
    }

    direct_counter(CounterType.packets_and_bytes) flow_table_v6_counter;

    // The IPv6 twin of forward_v4: same parameters, 128-bit addresses.
    action forward_v6(PortId_t port, MacAddr_t src_mac, MacAddr_t dst_mac,
                      Ipv6Addr_t src_addr, Ipv6Addr_t dst_addr,
                      L4Port_t src_port, L4Port_t dst_port, bit<16> mtu) {
        flow_table_v6_counter.count();
        meta.rw.port = port;
        meta.rw.src_mac = src_mac;
        meta.rw.dst_mac = dst_mac;
        meta.rw.src_addr6 = src_addr;
        meta.rw.dst_addr6 = dst_addr;
        meta.rw.src_port = src_port;
        meta.rw.dst_port = dst_port;
        meta.rw.mtu = mtu;
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
            meta.l4_src_port:      exact @name("src_port");
            meta.l4_dst_port:      exact @name("dst_port");
        }
        actions = {
            forward_v6;
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
            meta.l4_src_port:      exact @name("src_port");
            meta.l4_dst_port:      exact @name("dst_port");
        }
        actions = {
            forward_v4;
            @defaultonly miss;
        }
        const default_action = miss();
        counters = flow_table_v4_counter;
        // Entries may carry idle_timeout_ns; the switch then notifies idle
        // entries itself instead of the controller polling every counter.
        support_timeout = true;
        size = FLOW_TABLE_V4_SIZE;
    }

    apply {
        port_table.apply();
        if (!meta.port_bound) {
            punt(PuntReason.PORT_UNBOUND);
        } else if (hdr.ipv6.isValid()) {
            if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
                if (hdr.ipv6.next_hdr == 0 || hdr.ipv6.next_hdr == 43 || hdr.ipv6.next_hdr == 44 ||
                    hdr.ipv6.next_hdr == 60 || hdr.ipv6.next_hdr == 51 || hdr.ipv6.next_hdr == 50) {
                    // hop-by-hop, routing, fragment, destination options, AH, ESP
                    punt(PuntReason.IP_OPTIONS);
                } else {
                    punt(PuntReason.NOT_OFFLOADABLE);
                }
            } else if (hdr.ipv6.hop_limit <= 1) {
                punt(PuntReason.TTL_EXPIRED);
            } else {
                switch (flow_table_v6.apply().action_run) {
                    forward_v6: {
                        // nf_flow_exceeds_mtu on the IPv6 packet length
                        if (hdr.ipv6.payload_len + 40 > meta.rw.mtu) {
                            punt(PuntReason.MTU_EXCEEDED);
                        } else if (hdr.tcp.isValid() &&
                                   (hdr.tcp.fin == 1 || hdr.tcp.rst == 1)) {
                            punt(PuntReason.TCP_FIN_RST);
                        } else {
                            meta.rw.apply = true;
                        }
                    }
                    default: {
                        punt(PuntReason.MISS);
                    }
                }
            }
        } else if (!hdr.ipv4.isValid()) {
            punt(PuntReason.NOT_OFFLOADABLE);
        } else if (std_meta.checksum_error == 1) {
            punt(PuntReason.BAD_CHECKSUM);
        } else if (hdr.ipv4.ihl != 5) {
            punt(PuntReason.IP_OPTIONS);
        } else if (hdr.ipv4.more_fragments == 1 || hdr.ipv4.frag_offset != 0) {
            punt(PuntReason.IP_FRAGMENT);
        } else if (!hdr.tcp.isValid() && !hdr.udp.isValid()) {
            punt(PuntReason.NOT_OFFLOADABLE);
        } else if (hdr.ipv4.ttl <= 1) {
            punt(PuntReason.TTL_EXPIRED);
        } else {
            switch (flow_table_v4.apply().action_run) {
                forward_v4: {
                    // Same order as nf_flow_offload_ip_hook: MTU first,
                    // then the TCP state check that tears down on FIN/RST.
                    if (hdr.ipv4.total_len > meta.rw.mtu) {
                        punt(PuntReason.MTU_EXCEEDED);
                    } else if (hdr.tcp.isValid() &&
                               (hdr.tcp.fin == 1 || hdr.tcp.rst == 1)) {
                        punt(PuntReason.TCP_FIN_RST);
                    } else {
                        meta.rw.apply = true;
                    }
                }
                default: {
                    punt(PuntReason.MISS);
                }
            }
        }
    }
}

#endif
