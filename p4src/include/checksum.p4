#ifndef P4FT_CHECKSUM_P4
#define P4FT_CHECKSUM_P4

#include <core.p4>
#include <v1model.p4>
#include "header.p4"

control FtVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply {
        // A wrong IPv4 header checksum sets standard_metadata.checksum_error;
        // ingress punts such packets (the kernel's ip_rcv drops them).
        verify_checksum(hdr.ipv4.isValid() && hdr.ipv4.ihl == 5,
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.diffserv,
              hdr.ipv4.total_len, hdr.ipv4.identification,
              hdr.ipv4.reserved, hdr.ipv4.dont_fragment,
              hdr.ipv4.more_fragments, hdr.ipv4.frag_offset,
              hdr.ipv4.ttl, hdr.ipv4.protocol,
              hdr.ipv4.src_addr, hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

control FtComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply {
        // Only packets the fast path rewrote; punted packets leave untouched.
        // For a header whose checksum was valid, recomputing gives the same
        // value as the kernel's incremental csum_replace4/ip_decrease_ttl.
        update_checksum(meta.rw.apply && hdr.ipv4.isValid(),
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.diffserv,
              hdr.ipv4.total_len, hdr.ipv4.identification,
              hdr.ipv4.reserved, hdr.ipv4.dont_fragment,
              hdr.ipv4.more_fragments, hdr.ipv4.frag_offset,
              hdr.ipv4.ttl, hdr.ipv4.protocol,
              hdr.ipv4.src_addr, hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

#endif
