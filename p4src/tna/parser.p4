#ifndef P4FT_TNA_PARSER_P4
#define P4FT_TNA_PARSER_P4

// The v1model parser's states (include/parser.p4) in TNA: the same headers
// from the same frames, after Tofino's intrinsic and port metadata. The
// checksum units take out, as the headers pass, what a hit may rewrite
// (addresses, TTL, ports) together with the old checksum; the deparser adds
// the new values back (RFC 1624's incremental update).
parser FtIngressParser(packet_in pkt,
                       out headers_t hdr,
                       out tna_metadata_t meta,
                       out ingress_intrinsic_metadata_t ig_intr_md) {
    Checksum() ipv4_csum;
    Checksum() l4_csum;

    state start {
        pkt.extract(ig_intr_md);
        pkt.advance(PORT_METADATA_SIZE);
        // Only the CPU port may carry a packet_out header.
        transition select(ig_intr_md.ingress_port) {
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
        ipv4_csum.subtract({hdr.ipv4.hdr_checksum, hdr.ipv4.ttl, hdr.ipv4.protocol,
                            hdr.ipv4.src_addr, hdr.ipv4.dst_addr});
        ipv4_csum.subtract_all_and_deposit(meta.ipv4_csum_residual);
        l4_csum.subtract({hdr.ipv4.src_addr, hdr.ipv4.dst_addr});
        transition select(hdr.ipv4.ihl, hdr.ipv4.flags_frag, hdr.ipv4.protocol) {
            (5, 0 &&& IPV4_FRAG_MASK, IP_PROTO_TCP): parse_tcp;
            (5, 0 &&& IPV4_FRAG_MASK, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }
    state parse_ipv6 {
        pkt.extract(hdr.ipv6);
        l4_csum.subtract({hdr.ipv6.src_addr, hdr.ipv6.dst_addr});
        transition select(hdr.ipv6.next_hdr) {
            IP_PROTO_TCP: parse_tcp;
            IP_PROTO_UDP: parse_udp;
            default: accept;
        }
    }
    state parse_tcp {
        pkt.extract(hdr.l4);
        pkt.extract(hdr.tcp);
        l4_csum.subtract({hdr.l4.src_port, hdr.l4.dst_port, hdr.tcp.checksum});
        l4_csum.subtract_all_and_deposit(meta.l4_csum_residual);
        transition accept;
    }
    state parse_udp {
        pkt.extract(hdr.l4);
        pkt.extract(hdr.udp);
        l4_csum.subtract({hdr.l4.src_port, hdr.l4.dst_port, hdr.udp.checksum});
        l4_csum.subtract_all_and_deposit(meta.l4_csum_residual);
        transition accept;
    }
}

// The new values added back: only for a hit that rewrote them (meta's
// flags), so a punted packet leaves exactly as it came. A zero UDP checksum
// ("none") is never updated (the flag is not set for it); a computed zero
// is sent as 0xffff, as nf_flow_nat_ip_udp does (CSUM_MANGLED_0).
control FtIngressDeparser(packet_out pkt,
                          inout headers_t hdr,
                          in tna_metadata_t meta,
                          in ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md) {
    Checksum() ipv4_csum;
    Checksum() tcp4_csum;
    Checksum() udp4_csum;
    Checksum() tcp6_csum;
    Checksum() udp6_csum;

    apply {
        if (meta.update_ipv4_csum == 1) {
            hdr.ipv4.hdr_checksum = ipv4_csum.update({hdr.ipv4.ttl, hdr.ipv4.protocol, hdr.ipv4.src_addr,
                                                      hdr.ipv4.dst_addr, meta.ipv4_csum_residual});
        }
        if (meta.update_tcp4_csum == 1) {
            hdr.tcp.checksum = tcp4_csum.update({hdr.ipv4.src_addr, hdr.ipv4.dst_addr, hdr.l4.src_port,
                                                 hdr.l4.dst_port, meta.l4_csum_residual});
        }
        if (meta.update_udp4_csum == 1) {
            hdr.udp.checksum = udp4_csum.update({hdr.ipv4.src_addr, hdr.ipv4.dst_addr, hdr.l4.src_port,
                                                 hdr.l4.dst_port, meta.l4_csum_residual}, true);
        }
        if (meta.update_tcp6_csum == 1) {
            hdr.tcp.checksum = tcp6_csum.update({hdr.ipv6.src_addr, hdr.ipv6.dst_addr, hdr.l4.src_port,
                                                 hdr.l4.dst_port, meta.l4_csum_residual});
        }
        if (meta.update_udp6_csum == 1) {
            hdr.udp.checksum = udp6_csum.update({hdr.ipv6.src_addr, hdr.ipv6.dst_addr, hdr.l4.src_port,
                                                 hdr.l4.dst_port, meta.l4_csum_residual}, true);
        }
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
