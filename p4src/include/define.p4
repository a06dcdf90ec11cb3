// Shared typedefs and constants of the flowtable program.
#ifndef P4FT_DEFINE_P4
#define P4FT_DEFINE_P4

#ifndef __TARGET_TOFINO__
typedef bit<9>  PortId_t;      // v1model's width; tna.p4 defines Tofino's, also 9 bits
#endif
typedef bit<48> MacAddr_t;
typedef bit<32> Ipv4Addr_t;
typedef bit<128> Ipv6Addr_t;
typedef bit<16> L4Port_t;
typedef bit<8>  FlowtableId_t;
// Names an entry of nexthop_table (control/nexthop.p4): a neighbour behind
// a port, which flow entries point to. 0 is never written by the controller.
typedef bit<16> NexthopId_t;

// Must equal the switch's CPU port: simple_switch's --cpu-port; on Tofino
// its PCIe CPU port (tna/flowtable.p4 is built with -DP4FT_CPU_PORT=...).
#ifndef P4FT_CPU_PORT
#define P4FT_CPU_PORT 510
#endif
const PortId_t CPU_PORT = P4FT_CPU_PORT;

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_IPV6 = 0x86dd;
const bit<8>  IP_PROTO_TCP = 6;
const bit<8>  IP_PROTO_UDP = 17;
const bit<16> IPV4_FRAG_MASK = 0x3fff;     // MF and the fragment offset
const bit<8>  TCP_FLAGS_FIN_RST = 0x05;    // FIN (0x01) and RST (0x04)

// Why a packet left the fast path. The controller reads these names and
// values from P4Info (type_info.serializable_enums), never from here.
enum bit<8> PuntReason {
    NONE            = 0,  // not punted: metadata starts zeroed, so every packet starts here
    MISS            = 1,  // no flow entry: the slow path decides
    TCP_FIN_RST     = 2,  // hit, but FIN or RST: tear the flow down
    MTU_EXCEEDED    = 3,  // longer than the egress MTU: kernel fragments or sends ICMP
    TTL_EXPIRED     = 4,  // TTL or hop limit <= 1: kernel sends ICMP time exceeded
    IP_OPTIONS      = 5,  // IHL != 5, or an IPv6 extension header: the fast path walks neither
    IP_FRAGMENT     = 6,  // MF set or offset != 0
    NOT_OFFLOADABLE = 7,  // not IPv4/IPv6 TCP/UDP (ARP, ICMP, ND, truncated L4, ...)
    PORT_UNBOUND    = 8,  // ingress port bound to no flowtable
    MALFORMED       = 9   // lengths that disagree with the frame, TCP data offset < 5
}

const bit<32> ETH_HDR_LEN  = 14;
const bit<16> IPV4_HDR_LEN = 20;
const bit<16> IPV6_HDR_LEN = 40;
const bit<16> UDP_HDR_LEN  = 8;

// One's-complement update of a checksum by a precomputed delta d (RFC 1624
// eqn. 3: HC' = ~(~HC + d), d the sum of ~m + m' over the changed words,
// d in 1..0xffff). The controller computes each entry's d from its tuple and
// rewrite. Written out, ~(~HC +' d) is HC - d when d <= HC, and HC - d - 1
// (mod 2^16) when d > HC (the end-around carry): one subtraction, one
// comparison, no 17-bit sum. Same result as the kernel's csum_replace4,
// inet_proto_csum_replace4 and ip_decrease_ttl, -0 included.
#define CSUM_UPDATE(csum, delta) \
    ((csum) - (delta) - ((delta) > (csum) ? 16w1 : 16w0))

// The header checksum's delta when the TTL drops by one and nothing else
// changes: ~m + m' for the (ttl, protocol) word, as ip_decrease_ttl adds
// htons(0x0100). The controller folds it into a NAT flow's delta.
const bit<16> TTL_DECREMENT_DELTA = 0xfeff;

#endif
