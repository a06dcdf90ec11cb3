#ifndef P4FT_SIZE_P4
#define P4FT_SIZE_P4

#define PORT_TABLE_SIZE     512
// Two entries per offloaded flow (one per direction).
#define FLOW_TABLE_V4_SIZE  262144
#define FLOW_TABLE_V6_SIZE  65536

#endif
