#ifndef P4FT_SIZE_P4
#define P4FT_SIZE_P4

#define PORT_TABLE_SIZE     512
// Neighbours flows are sent to (every LAN host the router talks to is one).
#ifndef NEXTHOP_TABLE_SIZE
#define NEXTHOP_TABLE_SIZE  16384
#endif
// Two entries per offloaded flow (one per direction). A build may set its
// own (-D): the Tofino build sets what the chip holds (docs/tofino.md).
#ifndef FLOW_TABLE_V4_SIZE
#define FLOW_TABLE_V4_SIZE  262144
#endif
#ifndef FLOW_TABLE_V6_SIZE
#define FLOW_TABLE_V6_SIZE  65536
#endif

#endif
