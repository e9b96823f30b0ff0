/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the programs and userspace. The Rust mirror is
 * bpf/src/maps.rs; its tests compare every size with the BTF of the built
 * object, so a change here that is not made there fails the build's tests.
 * No implicit padding: every struct spells out its padding.
 */
#ifndef TETHER_H
#define TETHER_H

#define TETHER_MAX_CONTAINERS 16384
#define TETHER_MAX_INTERFACES 65536
/* Slots of the TC programs' array fast path (a power of two; see tether_tc_slot). */
#define TETHER_TC_SLOT_BITS 10
#define TETHER_TC_SLOTS (1u << TETHER_TC_SLOT_BITS)
#define TETHER_MAX_RULES 65536
#define TETHER_RINGBUF_BYTES (256 * 1024)
#define TETHER_MAX_CGROUP_DEPTH 16

/* tether_container.flags */
#define TETHER_F_ACCOUNT 1u
#define TETHER_F_POLICY 2u
#define TETHER_F_AUDIT_DENY 4u
#define TETHER_F_AUDIT_CONNECT 8u
/*
 * The container's packets and bytes are counted at its interfaces (TC) alone: the
 * cgroup_skb programs leave them uncounted (and are attached only for the policy). Set for
 * a container whose network namespace is its own; loopback traffic is then not counted.
 */
#define TETHER_F_COUNT_AT_IFACES 16u
/*
 * With TETHER_F_POLICY: the container has no interface of its own where TC judges what its
 * packet sockets write (host network, or no interfaces selected); where the node-wide LSM
 * programs run, it may not open packet sockets.
 */
#define TETHER_F_REFUSE_PACKET 32u
/*
 * With TETHER_F_POLICY: the container's packets are judged at its interfaces (TC) alone;
 * no cgroup_skb egress program is attached for it. Set for a container whose network
 * namespace is its own, every interface of which gets TC programs (`judge_at =
 * "interfaces"`): every packet it sends, its sockets' included, is judged there.
 */
#define TETHER_F_JUDGE_AT_IFACES 64u

/* tether_event.kind */
#define TETHER_EV_DENY_CONNECT 1
#define TETHER_EV_DENY_SENDMSG 2
#define TETHER_EV_DROP_CGROUP 3
#define TETHER_EV_DROP_TC 4
#define TETHER_EV_CONNECT 5
#define TETHER_EV_REFUSE_CGROUP 6
#define TETHER_EV_REFUSE_TC 7
#define TETHER_EV_DENY_SOCKOPT 8
#define TETHER_EV_DENY_SOCKET 9

#define TETHER_AF_INET 2
#define TETHER_AF_INET6 10

/* Per-container configuration, keyed by cgroup id. */
struct tether_container {
	__u32 flags;
	__u32 sample_every; /* keep one audit event in N (0 or 1: all) */
	__u32 rate_per_sec; /* audit events per second per CPU (0: unlimited) */
	__u32 burst;
};

/* Who a cgroup id is: written by the shim, read by tetherd and tetherctl. */
struct tether_identity {
	char ns[80]; /* containerd identifiers: at most 76 bytes, NUL-padded */
	char id[96];
	__u64 attached_ns; /* CLOCK_REALTIME nanoseconds */
};

struct tether_counters {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 drops;       /* packets dropped by the egress policy */
	__u64 denials;     /* connect()/sendmsg() refused with EPERM */
	__u64 events_lost; /* audit events sampled out, rate limited or not fitting the ring */
};

/*
 * A tracked cgroup's state, per CPU: userspace writes the same config into every CPU's
 * copy (with zero counters); each CPU counts in its own copy, so a packet costs no atomic
 * operation. Userspace sums the counters. The value of both `cgroups` (a hash keyed by
 * cgroup id) and `cg_local` (the cgroup's local storage, see tether.bpf.c).
 */
struct tether_cgroup {
	struct tether_container config;
	__u64 cgroup_id; /* the container's cgroup id; 0: a local copy not written yet */
	struct tether_counters counters;
};

/* A tracked interface's entry in `tc_ifaces` (per-CPU, as `cgroups`). */
struct tether_iface {
	__u64 cgroup_id; /* the container the interface belongs to */
	__u32 flags;     /* the container's flags (they do not change while it runs) */
	__u32 pad;
	struct tether_counters counters;
};

/* A TCP socket's destination that its container's connect() hook allowed. */
struct tether_vetted {
	__u64 cgroup_id; /* the container whose hook allowed it */
	__u32 family; /* TETHER_AF_INET or TETHER_AF_INET6 */
	__u32 daddr[4]; /* network byte order; IPv4 in daddr[0] */
	__u32 pad;
};

/*
 * A destination the TC judge allowed to a container (see `allowed` in tether.bpf.c): a
 * slot of a small per-CPU cache, indexed by a hash of the container and the address.
 */
#define TETHER_ALLOWED_BITS 6
struct tether_allowed {
	__u64 cgroup_id; /* 0: an empty slot (no cgroup has id 0) */
	__u32 family; /* TETHER_AF_INET or TETHER_AF_INET6 */
	__u32 daddr[4]; /* network byte order; IPv4 in daddr[0] */
	__u32 pad;
};

/* An interface inside a network namespace. netns_cookie is the namespace's
 * cookie, or before Linux 6.2 the classid of the interface's clsact filters. */
struct tether_if_key {
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 pad;
};

/*
 * Who a container is to Kubernetes (`k8s_names`), from its CRI annotations: for userspace
 * only. NUL-padded; each field holds the longest name Kubernetes allows.
 */
struct tether_k8s_names {
	char ns[64];        /* the pod's namespace (a DNS label: 63 bytes) */
	char pod[256];      /* the pod's name (a DNS subdomain: 253 bytes) */
	char container[64]; /* the container's name (63 bytes); empty for the pod's sandbox */
};

/* An interface's name (`iface_names`): IFNAMSIZ bytes, NUL-padded. */
struct tether_if_name {
	char name[16];
};

/*
 * The fast path of the TC programs: an interface's entry in the per-CPU array
 * `tc_slots`, at the slot its key hashes to (tether_tc_slot_of). The array
 * lookup is inlined by the verifier (no call, no hash of the key, no bucket
 * walk); the key stored in the slot tells whether the slot is this interface's.
 * An interface whose slot another one holds has its entry in `tc_ifaces`.
 */
struct tether_tc_slot {
	struct tether_if_key key; /* all zero: a free slot (no interface has ifindex 0) */
	struct tether_iface iface;
};

/*
 * Who holds a slot: written by userspace only, with BPF_NOEXIST, so that two
 * shims claiming one slot at once cannot both win; also the list of the
 * interfaces that have slots, without reading the per-CPU array.
 */
struct tether_tc_owner {
	struct tether_if_key key;
	__u64 cgroup_id;
};

/*
 * The slot of an interface: Fibonacci hashing of the netns cookie (a counter,
 * so small and sequential) with the ifindex folded into its upper half. The
 * Rust mirror is maps::tc_slot_of; the TC program tests fail if they differ.
 */
static inline __u32 tether_tc_slot_of(__u64 netns_cookie, __u32 ifindex)
{
	__u64 x = netns_cookie ^ ((__u64)ifindex << 32);

	return (__u32)((x * 0x9E3779B97F4A7C15ULL) >> (64 - TETHER_TC_SLOT_BITS));
}

/*
 * LPM keys: the cgroup id is part of the matched data, so one trie holds
 * every container's rules; prefixlen = 64 + the CIDR's prefix length.
 */
struct tether_deny4_key {
	__u32 prefixlen;
	__u32 cgroup_lo;
	__u32 cgroup_hi;
	__u32 addr; /* network byte order */
};

struct tether_deny6_key {
	__u32 prefixlen;
	__u32 cgroup_lo;
	__u32 cgroup_hi;
	__u32 addr[4]; /* network byte order */
};

struct tether_rate {
	__u64 last_ns;
	__u64 tokens;
	__u64 seen;
};

struct tether_event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u64 cgroup_id;
	__u32 kind;
	__u32 pid;
	__u16 family;
	__u16 protocol;
	__u16 dport;
	__u16 pad;
	__u32 ifindex;
	__u32 daddr[4]; /* network byte order; IPv4 in daddr[0] */
	__u32 pad2;
};

_Static_assert(sizeof(struct tether_event) == 56, "bpf/src/maps.rs RawEvent is 56 bytes");

#endif
