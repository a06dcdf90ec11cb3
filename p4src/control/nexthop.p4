#ifndef P4FT_NEXTHOP_P4
#define P4FT_NEXTHOP_P4

#include <core.p4>
#include <v1model.p4>
#include "../include/header.p4"
#include "../include/size.p4"

// Where a fitting hit leaves: the next hop its flow entry names. One entry
// per neighbour a flow is sent to (port, the port's MAC, the neighbour's
// MAC), managed by the controller like the kernel's neighbour table: a
// neighbour's new MAC is one write, whatever the number of flows behind it.
// The controller writes a next hop before the first flow entry that names
// it and deletes it after the last; a miss is a packet already rewritten
// for a next hop that is gone, and is dropped as the kernel drops what it
// cannot send to a failed neighbour.
control NexthopIngress(inout headers_t hdr,
                       inout metadata_t meta,
                       inout standard_metadata_t std_meta) {

    action set_nexthop(PortId_t port, MacAddr_t src_mac, MacAddr_t dst_mac) {
        hdr.ethernet.src_addr = src_mac;
        hdr.ethernet.dst_addr = dst_mac;
        std_meta.egress_spec = port;
    }

    @defaultonly
    action nexthop_miss() {
        mark_to_drop(std_meta);
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

    apply {
        nexthop_table.apply();
    }
}

#endif
