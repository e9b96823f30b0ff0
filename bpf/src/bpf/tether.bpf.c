// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tether's shared programs: per-container traffic accounting, egress policy
 * and audit events. Loaded and verified once per node by tetherd, pinned in
 * bpffs, and attached per container by the shim.
 *
 * Identity: a container is its cgroup v2 id. The cgroup programs are attached
 * to the container's own cgroup, so only tracked containers run them; the TC
 * programs are attached only to interfaces inside tracked containers' network
 * namespaces, and find their container through `tc_slots` (or `tc_ifaces`),
 * keyed by (netns cookie, ifindex) so that two containers' `eth0` never share
 * an entry.
 *
 * The context structs come from the UAPI (<linux/bpf.h>); the verifier
 * rewrites their field accesses for the running kernel, so the object is
 * portable without relocations. The only kernel-version-dependent choice (the
 * netns cookie in TC) is made by the loader through `tc_netns_cookie`.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tether.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Set by the loader before load: 1 when the kernel has the
 * bpf_cast_to_kern_ctx() kfunc (Linux 6.2), through which a TC program reads
 * the cookie of the network namespace of the packet's device
 * (skb->dev->nd_net.net->net_cookie, located by CO-RE). With 0 the verifier
 * prunes that path and the namespace part of a TC key is the classid of the
 * clsact filter that runs the program (cls_bpf stores it in skb->tc_classid,
 * 16 bits, before the program runs): the attach step gives each interface's
 * filters a classid that makes (classid, ifindex) unique on the node.
 *
 * bpf_get_netns_cookie() on an skb (TC, Linux 6.14) is not used: it reports
 * the namespace of the packet's socket, or init_net's when there is none
 * (every ingress packet), not the namespace of the interface.
 */
const volatile __u32 tc_netns_cookie = 0;

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* CO-RE views of the few kernel fields read; libbpf matches them by name. */
struct net___tether {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

struct possible_net___tether {
	struct net___tether *net;
} __attribute__((preserve_access_index));

struct net_device___tether {
	struct possible_net___tether nd_net;
} __attribute__((preserve_access_index));

struct sk_buff___tether {
	struct net_device___tether *dev;
} __attribute__((preserve_access_index));

static __always_inline __u64 skb_netns_key(struct __sk_buff *skb)
{
	if (!tc_netns_cookie)
		return skb->tc_classid;
	if (!bpf_ksym_exists(bpf_cast_to_kern_ctx))
		return 0;
	struct sk_buff___tether *kskb = bpf_cast_to_kern_ctx(skb);
	struct net_device___tether *dev = kskb->dev;

	if (!dev)
		return 0;
	struct net___tether *net = dev->nd_net.net;

	return net ? net->net_cookie : 0;
}

/*
 * Tracked cgroups: config and counters (see tether.h). Written by userspace only, so
 * not preallocated: memory follows the containers tracked, not max_entries times the
 * number of CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, TETHER_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct tether_cgroup);
} cgroups SEC(".maps");

/*
 * The same state in the local storage of the cgroup a program is attached to: the cgroup
 * programs reach it with bpf_get_local_storage(), a pointer read, instead of reading the
 * socket's cgroup id and looking it up in `cgroups` (on a busy CPU both the lookup's
 * memory and the cgroup's are cold for every packet). With a __u64 key (Linux 5.9) every
 * program attached to one cgroup shares one storage, made at the first attach and freed
 * with the cgroup, and it is the container's even for a socket of a child cgroup.
 *
 * The kernel creates a zeroed storage at the first attach; the shim writes the
 * container's state into it once the links are in place, before the container starts.
 * Until then (and in BPF_PROG_TEST_RUN, which gives each run a fresh storage) cgroup_id
 * is 0 and the programs use `cgroups`. Userspace sums the counters of both, and reads the
 * local ones before the container's cgroup is removed (`runc delete`).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, __u64);
	__type(value, struct tether_cgroup);
} cg_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TETHER_MAX_CONTAINERS);
	__type(key, __u64);
	__type(value, struct tether_identity);
} identities SEC(".maps");

/*
 * Tracked interfaces: their container and counters. Most are in `tc_slots`, an
 * array lookup; those whose slot was taken are in `tc_ifaces`, a hash lookup (the
 * key's hash, a bucket walk and a key compare: on this path, per packet, the
 * difference is measurable). `tc_owners` says which interface holds which slot.
 * Userspace clears a slot before it gives it up; a program that found the slot
 * just before that may still count its one packet there, as it would in a hash
 * entry being deleted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TETHER_TC_SLOTS);
	__type(key, __u32);
	__type(value, struct tether_tc_slot);
} tc_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TETHER_TC_SLOTS);
	__type(key, __u32);
	__type(value, struct tether_tc_owner);
} tc_owners SEC(".maps");

/* Not preallocated, as `cgroups`: 65536 entries would take 4.5 MiB per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, TETHER_MAX_INTERFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tether_if_key);
	__type(value, struct tether_iface);
} tc_ifaces SEC(".maps");

/*
 * The name of each tracked interface, as the attach step saw it in its namespace: for
 * userspace (tetherd's stats name `eth0`, not `if2`), no program reads it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TETHER_MAX_INTERFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tether_if_key);
	__type(value, struct tether_if_name);
} iface_names SEC(".maps");

/*
 * The Kubernetes names of each container of a pod (namespace, pod, container), keyed by
 * cgroup id: for userspace (tetherd's stats, metrics and audit), no program reads it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TETHER_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct tether_k8s_names);
} k8s_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TETHER_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tether_deny4_key);
	__type(value, __u32);
} deny4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TETHER_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tether_deny6_key);
	__type(value, __u32);
} deny6 SEC(".maps");

/*
 * Per-socket cache of the connect()-time verdict: a TCP socket whose connect() the
 * container's hook allowed carries the destination it allowed. Socket storage lives and
 * dies with the socket; nothing to clean up.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tether_vetted);
} vetted SEC(".maps");

/*
 * Per-CPU cache of the destinations the TC judge allowed, by container: the plain TCP
 * segments of a container judged at its interfaces (see allowed_frame) to an address
 * the judge let through before are not judged again. A container's deny rules are
 * written before its first instruction and do not change while it runs, and a cgroup
 * id is never reused, so an entry stays true for as long as it is there. Only the TC
 * programs use it: they run with bottom halves off (egress) or in softirq (ingress), so
 * nothing else on the CPU runs them meanwhile and no entry is seen half-written.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1u << TETHER_ALLOWED_BITS);
	__type(key, __u32);
	__type(value, struct tether_allowed);
} allowed SEC(".maps");

/*
 * Per-CPU token buckets: no cross-CPU contention; the limit applies per CPU. Made by
 * the programs at a container's first event; not preallocated, as `cgroups` (an
 * allocation that fails counts the event as lost).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, TETHER_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct tether_rate);
} rates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TETHER_RINGBUF_BYTES);
} events SEC(".maps");

#define DIR_RX 0
#define DIR_TX 1

static __always_inline struct tether_cgroup *lookup_cgroup(__u64 *cgid)
{
	return bpf_map_lookup_elem(&cgroups, cgid);
}

/* The attached cgroup's local state, once the shim has written it (see `cg_local`). */
static __always_inline struct tether_cgroup *local_cgroup(__u64 *cgid)
{
	struct tether_cgroup *cg = bpf_get_local_storage(&cg_local, 0);

	if (!cg->cgroup_id)
		return NULL;
	*cgid = cg->cgroup_id;
	return cg;
}

static __always_inline void count(struct tether_counters *c, int dir, __u64 bytes)
{
	if (!c)
		return;
	if (dir == DIR_RX) {
		c->rx_packets++;
		c->rx_bytes += bytes;
	} else {
		c->tx_packets++;
		c->tx_bytes += bytes;
	}
}

/*
 * Sampling and rate limit for audit events: keep one event in `sample_every`,
 * then spend a token from a per-CPU bucket of `burst` tokens refilled at
 * `rate_per_sec`. A suppressed event is counted in `events_lost`.
 */
static __always_inline bool event_allowed(__u64 cgid, const struct tether_container *ct)
{
	struct tether_rate *r = bpf_map_lookup_elem(&rates, &cgid);

	if (!r) {
		struct tether_rate init = { .tokens = ct->burst };
		bpf_map_update_elem(&rates, &cgid, &init, BPF_NOEXIST);
		r = bpf_map_lookup_elem(&rates, &cgid);
		if (!r)
			return false;
	}
	r->seen++;
	if (ct->sample_every > 1 && (r->seen % ct->sample_every) != 0)
		return false;
	if (ct->rate_per_sec == 0)
		return true;

	__u64 now = bpf_ktime_get_ns();
	__u64 elapsed = now - r->last_ns;

	if (elapsed > 10ULL * 1000000000ULL)
		elapsed = 10ULL * 1000000000ULL;
	__u64 refill = elapsed * ct->rate_per_sec / 1000000000ULL;

	if (refill) {
		r->tokens += refill;
		r->last_ns = now;
	}
	if (r->tokens > ct->burst)
		r->tokens = ct->burst;
	if (r->tokens == 0)
		return false;
	r->tokens--;
	return true;
}

static __always_inline void emit(__u64 cgid, const struct tether_container *ct,
				 struct tether_counters *c, __u32 kind, __u16 family,
				 __u16 protocol, const __u32 *daddr, __u16 dport, __u32 ifindex,
				 bool with_pid)
{
	if (!event_allowed(cgid, ct)) {
		if (c)
			c->events_lost++;
		return;
	}
	struct tether_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		if (c)
			c->events_lost++;
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cgid;
	e->kind = kind;
	e->family = family;
	e->protocol = protocol;
	e->dport = dport;
	e->ifindex = ifindex;
	e->pid = with_pid ? (__u32)(bpf_get_current_pid_tgid() >> 32) : 0;
	e->daddr[0] = daddr[0];
	e->daddr[1] = family == TETHER_AF_INET6 ? daddr[1] : 0;
	e->daddr[2] = family == TETHER_AF_INET6 ? daddr[2] : 0;
	e->daddr[3] = family == TETHER_AF_INET6 ? daddr[3] : 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline bool denied4(__u64 cgid, __u32 daddr)
{
	struct tether_deny4_key k = {
		.prefixlen = 64 + 32,
		.cgroup_lo = (__u32)cgid,
		.cgroup_hi = (__u32)(cgid >> 32),
		.addr = daddr,
	};

	return bpf_map_lookup_elem(&deny4, &k) != NULL;
}

static __always_inline bool denied6(__u64 cgid, const __u32 *daddr)
{
	/* An IPv4-mapped address (::ffff:a.b.c.d) is an IPv4 destination. */
	if (daddr[0] == 0 && daddr[1] == 0 && daddr[2] == bpf_htonl(0x0000ffff))
		return denied4(cgid, daddr[3]);

	struct tether_deny6_key k = {
		.prefixlen = 64 + 128,
		.cgroup_lo = (__u32)cgid,
		.cgroup_hi = (__u32)(cgid >> 32),
	};
	k.addr[0] = daddr[0];
	k.addr[1] = daddr[1];
	k.addr[2] = daddr[2];
	k.addr[3] = daddr[3];
	return bpf_map_lookup_elem(&deny6, &k) != NULL;
}

/* ---- LSM: setsockopt() of every caller, where the kernel runs BPF LSM ---- */

#define SOL_IP_ 0
#define SOL_IPV6_ 41
#define SOL_PACKET_ 263
#define IP_OPTIONS_ 4
#define IPV6_2292RTHDR_ 5
#define IPV6_RTHDR_ 57
#define PACKET_QDISC_BYPASS_ 20

/*
 * The refusal of PACKET_QDISC_BYPASS (see tether_setsockopt) where the kernel runs BPF
 * LSM (Debian's 6.1 and later; `lsm=...,bpf` elsewhere): the LSM hook runs for every
 * caller, 32-bit (compat) ones included, which skip the cgroup hook. Attached once per node by tetherd, not per
 * container: it finds the caller's container by its cgroup. The LSM hook does not see the
 * option's value, so source-route options are left to the cgroup hook and the judge.
 * First in the object: where the kernel refuses it (lockdown), the load fails before the
 * verifier spends time on the rest, and tetherd loads again without it.
 * ctx: the hook's arguments (socket, level, optname), then the return value so far.
 */
SEC("lsm/socket_setsockopt")
int tether_lsm_setsockopt(unsigned long long *ctx)
{
	int level = (int)ctx[1];
	int optname = (int)ctx[2];
	int ret = (int)ctx[3];

	if (ret)
		return ret;
	if (level != SOL_PACKET_ || optname != PACKET_QDISC_BYPASS_)
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct tether_cgroup *cg = lookup_cgroup(&cgid);

	if (!cg || !(cg->config.flags & TETHER_F_POLICY))
		return 0;
	cg->counters.denials++;
	if (cg->config.flags & TETHER_F_AUDIT_DENY) {
		__u32 none[4] = {};

		emit(cgid, &cg->config, &cg->counters, TETHER_EV_DENY_SOCKOPT, 0,
		     (__u16)level, none, (__u16)optname, 0, false);
	}
	return -1; /* -EPERM */
}

#define AF_PACKET_ 17

/*
 * Packet sockets of a container under a policy whose frames no TC program judges (host
 * network, or no interfaces selected): refused where the kernel runs BPF LSM. SOCK_PACKET
 * of AF_INET reaches the hook as AF_PACKET. Kernel sockets (kern) are not the container's.
 * ctx: family, type, protocol, kern, then the return value so far.
 */
SEC("lsm/socket_create")
int tether_lsm_socket(unsigned long long *ctx)
{
	int family = (int)ctx[0];
	int kern = (int)ctx[3];
	int ret = (int)ctx[4];

	if (ret)
		return ret;
	if (family != AF_PACKET_ || kern)
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct tether_cgroup *cg = lookup_cgroup(&cgid);
	__u32 want = TETHER_F_POLICY | TETHER_F_REFUSE_PACKET;

	if (!cg || (cg->config.flags & want) != want)
		return 0;
	cg->counters.denials++;
	if (cg->config.flags & TETHER_F_AUDIT_DENY) {
		__u32 none[4] = {};

		emit(cgid, &cg->config, &cg->counters, TETHER_EV_DENY_SOCKET, 0,
		     (__u16)family, none, 0, 0, false);
	}
	return -1; /* -EPERM */
}

/* ---- cgroup_skb: per-container packets and bytes, packet-level policy ---- */

/*
 * The socket's cgroup decides the container. A process in a child cgroup of
 * the container (e.g. systemd inside it) still runs the container's program;
 * look up its ancestors when the leaf is not tracked (bounded walk).
 */
static __always_inline struct tether_cgroup *skb_cgroup(struct __sk_buff *skb, __u64 *cgid)
{
	struct tether_cgroup *cg = local_cgroup(cgid);

	if (cg)
		return cg;
	*cgid = bpf_skb_cgroup_id(skb);
	cg = lookup_cgroup(cgid);

	if (cg)
		return cg;
	for (int level = TETHER_MAX_CGROUP_DEPTH - 1; level >= 0; level--) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);

		if (!id)
			continue;
		cg = lookup_cgroup(&id);
		if (cg) {
			*cgid = id;
			return cg;
		}
	}
	return NULL;
}

/* Whether the cgroup_skb programs count the container's packets (else TC does). */
static __always_inline bool counts_at_cgroup(__u32 flags)
{
	return (flags & (TETHER_F_ACCOUNT | TETHER_F_COUNT_AT_IFACES)) == TETHER_F_ACCOUNT;
}

SEC("cgroup_skb/ingress")
int tether_cg_ingress(struct __sk_buff *skb)
{
	__u64 cgid;
	struct tether_cgroup *cg = skb_cgroup(skb, &cgid);

	if (!cg || !counts_at_cgroup(cg->config.flags))
		return 1;
	count(&cg->counters, DIR_RX, skb->len);
	return 1;
}

#include "judge.h"

/*
 * Whether the IP header at `off` (kind: NEXT_IPV4 or NEXT_IPV6) is a plain one headed where
 * the vetted socket's connect() was allowed to go: an IPv4 header without options, or an
 * IPv6 header straight followed by TCP, carrying TCP to the vetted address (an IPv6 socket's
 * IPv4-mapped destination in IPv4). Only such a packet goes where its socket's destination
 * says; one with a source route (IP_OPTIONS, IPV6_RTHDR), or a tunnel's outer header
 * around the socket's segment, is judged.
 */
static __always_inline bool plain_ip4(const __u8 *h, const struct tether_vetted *v)
{
	if (h[0] != 0x45 || h[9] != IPPROTO_TCP)
		return false;
	__u32 daddr;

	__builtin_memcpy(&daddr, &h[16], 4);
	if (v->family == TETHER_AF_INET)
		return daddr == v->daddr[0];
	return v->daddr[0] == 0 && v->daddr[1] == 0 && v->daddr[2] == bpf_htonl(0x0000ffff) &&
	       daddr == v->daddr[3];
}

static __always_inline bool plain_ip6(const __u8 *h, const struct tether_vetted *v)
{
	if ((h[0] >> 4) != 6 || h[6] != IPPROTO_TCP || v->family != TETHER_AF_INET6)
		return false;
	__u32 daddr[4];

	__builtin_memcpy(daddr, &h[24], 16);
	return daddr[0] == v->daddr[0] && daddr[1] == v->daddr[1] && daddr[2] == v->daddr[2] &&
	       daddr[3] == v->daddr[3];
}

/*
 * Whether the IP header (kind: NEXT_IPV4 or NEXT_IPV6) at the start of a cgroup_skb
 * program's data is plain (see plain_ip4, plain_ip6), read in place (direct packet access:
 * cgroup_skb for a privileged loader since Linux 5.0). A socket's segment has its headers
 * in the linear part of its buffer; a packet whose header is not there is not plain here,
 * and so is judged.
 */
static __always_inline bool plain_in_place(struct __sk_buff *skb, __u32 kind,
					   const struct tether_vetted *v)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *end = (const __u8 *)(long)skb->data_end;

	if (kind == NEXT_IPV4)
		return data + 20 <= end && plain_ip4(data, v);
	if (kind == NEXT_IPV6)
		return data + 40 <= end && plain_ip6(data, v);
	return false;
}

/* Counts and reports a packet the judge did not let through. */
static __always_inline void judged_drop(__u64 cgid, const struct tether_container *ct,
					struct tether_counters *c, int verdict,
					const struct judged *j, __u32 ev_drop, __u32 ev_refuse,
					__u32 ifindex)
{
	c->drops++;
	if (ct->flags & TETHER_F_AUDIT_DENY)
		emit(cgid, ct, c, verdict == JUDGE_DENY ? ev_drop : ev_refuse, j->family,
		     j->proto, j->daddr, 0, ifindex, false);
}

/*
 * True when the packet's socket is a TCP socket whose connect() the container's hook
 * allowed, still connected to the destination it allowed: its packets need no lookup in
 * the deny trie (the costliest part of the per-packet work). The hooks are attached
 * before the container's first instruction, so every socket the container connects out
 * passes them. The socket's current destination is compared, not trusted: a later
 * program that rewrote connect()'s address (a service load balancer) leaves the packets
 * checked one by one, as are accepted connections (their peer connected in) and every
 * other kind of socket (UDP, ICMP, raw, and sockets the kernel connects itself).
 * The deny rules of a container do not change while it runs.
 */
/*
 * A 32-bit field of a `struct bpf_sock`, read with one load at a constant offset: the
 * verifier refuses arithmetic on socket pointers, which the compiler may otherwise emit
 * when it reuses an address for neighbouring fields.
 */
#define SK_U32(sk, field)                                                              \
	({                                                                             \
		__u32 __v;                                                             \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                  \
			     : "=r"(__v)                                               \
			     : "r"(sk), "i"(__builtin_offsetof(struct bpf_sock, field))); \
		__v;                                                                   \
	})

static __always_inline const struct tether_vetted *vetted_socket(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return NULL;
	sk = bpf_sk_fullsock(sk);
	if (!sk || SK_U32(sk, protocol) != IPPROTO_TCP)
		return NULL;
	struct tether_vetted *v = bpf_sk_storage_get(&vetted, sk, 0, 0);

	if (!v)
		return NULL;
	if (SK_U32(sk, family) == TETHER_AF_INET)
		return v->family == TETHER_AF_INET && v->daddr[0] == SK_U32(sk, dst_ip4) ? v
											: NULL;
	return v->family == TETHER_AF_INET6 && v->daddr[0] == SK_U32(sk, dst_ip6[0]) &&
			       v->daddr[1] == SK_U32(sk, dst_ip6[1]) &&
			       v->daddr[2] == SK_U32(sk, dst_ip6[2]) &&
			       v->daddr[3] == SK_U32(sk, dst_ip6[3]) ?
		       v :
		       NULL;
}

/* A packet of a TCP socket that the hook of container `cgid` vetted, whose IP header is
 * plain (see plain_in_place). */
static __always_inline bool vetted_plain(struct __sk_buff *skb, __u32 kind, __u64 cgid)
{
	const struct tether_vetted *v = vetted_socket(skb);

	return v && v->cgroup_id == cgid && plain_in_place(skb, kind, v);
}

SEC("cgroup_skb/egress")
int tether_cg_egress(struct __sk_buff *skb)
{
	__u64 cgid;
	struct tether_cgroup *cg = skb_cgroup(skb, &cgid);

	if (!cg)
		return 1;
	const struct tether_container *ct = &cg->config;
	struct tether_counters *c = &cg->counters;

	/* A container judged at its interfaces has this program only to be counted here. */
	if ((ct->flags & (TETHER_F_POLICY | TETHER_F_JUDGE_AT_IFACES)) == TETHER_F_POLICY) {
		struct judged j = {};
		int v = JUDGE_PASS;
		/* cgroup_skb sees the packet from the network header on, its protocol set by
		 * the kernel's IP output path. */
		__u32 kind = skb->protocol == bpf_htons(ETH_P_IP)   ? NEXT_IPV4 :
			     skb->protocol == bpf_htons(ETH_P_IPV6) ? NEXT_IPV6 :
								      NEXT_NONE;

		if (kind != NEXT_NONE && !vetted_plain(skb, kind, cgid))
			v = judge_packet(skb, 0, kind, cgid, &j);
		if (v != JUDGE_PASS) {
			judged_drop(cgid, ct, c, v, &j, TETHER_EV_DROP_CGROUP,
				    TETHER_EV_REFUSE_CGROUP, 0);
			return 0;
		}
	}
	if (counts_at_cgroup(ct->flags))
		count(c, DIR_TX, skb->len);
	return 1;
}

/* ---- cgroup sock_addr: connect() and sendmsg() see EPERM ---- */

static __always_inline int sock_addr_check(struct bpf_sock_addr *ctx, bool v6, __u32 kind_deny)
{
	__u64 cgid;
	struct tether_cgroup *cg = local_cgroup(&cgid);

	if (!cg) {
		cgid = bpf_get_current_cgroup_id();
		cg = lookup_cgroup(&cgid);
	}
	if (!cg) {
		/* Child cgroup of a tracked container: walk up (bounded). */
		for (int level = TETHER_MAX_CGROUP_DEPTH - 1; level >= 0; level--) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(level);

			if (!id)
				continue;
			cg = lookup_cgroup(&id);
			if (cg) {
				cgid = id;
				break;
			}
		}
		if (!cg)
			return 1;
	}
	const struct tether_container *ct = &cg->config;

	__u32 daddr[4] = {};
	__u16 family;
	bool deny = false;

	if (v6) {
		daddr[0] = ctx->user_ip6[0];
		daddr[1] = ctx->user_ip6[1];
		daddr[2] = ctx->user_ip6[2];
		daddr[3] = ctx->user_ip6[3];
		family = TETHER_AF_INET6;
		if (ct->flags & TETHER_F_POLICY)
			deny = denied6(cgid, daddr);
	} else {
		daddr[0] = ctx->user_ip4;
		family = TETHER_AF_INET;
		if (ct->flags & TETHER_F_POLICY)
			deny = denied4(cgid, daddr[0]);
	}
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);
	__u16 proto = (__u16)ctx->protocol;

	if (deny) {
		cg->counters.denials++;
		if (ct->flags & TETHER_F_AUDIT_DENY)
			emit(cgid, ct, &cg->counters, kind_deny, family, proto, daddr, dport, 0,
			     true);
		return 0;
	}
	/* The cgroup egress program's shortcut (see vetted_socket): not for a container judged
	 * at its interfaces, which has none. */
	if (kind_deny == TETHER_EV_DENY_CONNECT &&
	    (ct->flags & (TETHER_F_POLICY | TETHER_F_JUDGE_AT_IFACES)) == TETHER_F_POLICY &&
	    ctx->protocol == IPPROTO_TCP) {
		struct tether_vetted *v =
			bpf_sk_storage_get(&vetted, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (v) {
			v->cgroup_id = cgid;
			v->family = family;
			v->daddr[0] = daddr[0];
			v->daddr[1] = daddr[1];
			v->daddr[2] = daddr[2];
			v->daddr[3] = daddr[3];
		}
	}
	if ((ct->flags & TETHER_F_AUDIT_CONNECT) && kind_deny == TETHER_EV_DENY_CONNECT)
		emit(cgid, ct, &cg->counters, TETHER_EV_CONNECT, family, proto, daddr, dport, 0,
		     true);
	return 1;
}

SEC("cgroup/connect4")
int tether_connect4(struct bpf_sock_addr *ctx)
{
	return sock_addr_check(ctx, false, TETHER_EV_DENY_CONNECT);
}

SEC("cgroup/connect6")
int tether_connect6(struct bpf_sock_addr *ctx)
{
	return sock_addr_check(ctx, true, TETHER_EV_DENY_CONNECT);
}

SEC("cgroup/sendmsg4")
int tether_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_addr_check(ctx, false, TETHER_EV_DENY_SENDMSG);
}

SEC("cgroup/sendmsg6")
int tether_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_addr_check(ctx, true, TETHER_EV_DENY_SENDMSG);
}

/* ---- cgroup/setsockopt: options that would take packets around the policy ---- */

/*
 * Under a policy, setsockopt() refuses (EPERM) what would send packets where the deny
 * check does not judge them:
 * - PACKET_QDISC_BYPASS: a packet socket's frames would go straight to the driver,
 *   past the TC egress program that judges them;
 * - IP_OPTIONS and IPV6_RTHDR (and the RFC 2292 IPV6_2292RTHDR) with a value: a source
 *   route, which the packet judge refuses anyway; refused here the caller gets an error
 *   instead of a connection that hangs.
 * setsockopt() of a 32-bit (compat) caller does not run cgroup programs: there the
 * packets are refused by the judge (source routes), and frames of a bypassing packet
 * socket are not judged (see the README's enforcement table).
 */
SEC("cgroup/setsockopt")
int tether_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level;
	int optname = ctx->optname;
	bool route = (level == SOL_IP_ && optname == IP_OPTIONS_) ||
		     (level == SOL_IPV6_ && (optname == IPV6_RTHDR_ || optname == IPV6_2292RTHDR_));
	bool refused = (route && ctx->optlen > 0) ||
		       (level == SOL_PACKET_ && optname == PACKET_QDISC_BYPASS_);

	/* 0: the kernel uses the caller's own buffer, whatever its size (a program that
	 * leaves an option longer than a page as it found it fails it on some kernels). */
	ctx->optlen = 0;
	if (!refused)
		return 1;
	__u64 cgid;
	struct tether_cgroup *cg = local_cgroup(&cgid);

	if (!cg) {
		cgid = bpf_get_current_cgroup_id();
		cg = lookup_cgroup(&cgid);
	}
	if (!cg || !(cg->config.flags & TETHER_F_POLICY))
		return 1;
	cg->counters.denials++;
	if (cg->config.flags & TETHER_F_AUDIT_DENY) {
		__u32 none[4] = {};

		emit(cgid, &cg->config, &cg->counters, TETHER_EV_DENY_SOCKOPT, 0,
		     (__u16)level, none, (__u16)optname, 0, false);
	}
	return 0;
}

/* ---- TC (TCX or clsact): per-interface accounting inside the container's netns ---- */

/*
 * Whether a packet was sent by an IP socket (TCP, UDP, ICMP, raw IP) of the container's own
 * cgroup, so it passed the IP output path where the cgroup egress program runs: that
 * program judged it (unless the container is judged at its interfaces,
 * TETHER_F_JUDGE_AT_IFACES, and has none for judging) and, where the container is counted
 * at its cgroup, counted it. Everything else is judged at TC: packets of a packet socket
 * (AF_PACKET writes whole frames and skips the IP output path), of processes outside the
 * container's cgroup, and forwarded packets.
 */
static __always_inline bool from_own_ip_socket(struct __sk_buff *skb, __u64 id)
{
	if (bpf_skb_cgroup_id(skb) != id)
		return false;
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return false;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return false;
	__u32 family = SK_U32(sk, family);

	return family == TETHER_AF_INET || family == TETHER_AF_INET6;
}

/* Where a plain TCP packet is headed (see plain_ip4, plain_ip6). */
struct dest {
	__u32 family;
	__u32 daddr[4];
};

/*
 * The destination of an Ethernet frame whose IP header, read in place, is plain: an
 * untagged IPv4 header without options or an IPv6 header straight followed by TCP,
 * carrying TCP. Such a packet goes where its header says and nowhere else; any other
 * (a source route, a tunnel, an extension header, a VLAN tag, a header outside the
 * linear part of the buffer) is judged whole.
 */
static __always_inline bool plain_frame(struct __sk_buff *skb, struct dest *d)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *end = (const __u8 *)(long)skb->data_end;

	if (data + 14 + 20 > end)
		return false;
	const __u8 *h = data + 14;

	if (data[12] == (ETH_P_IP >> 8) && data[13] == (ETH_P_IP & 0xff)) {
		if (h[0] != 0x45 || h[9] != IPPROTO_TCP)
			return false;
		d->family = TETHER_AF_INET;
		__builtin_memcpy(&d->daddr[0], &h[16], 4);
		d->daddr[1] = d->daddr[2] = d->daddr[3] = 0;
		return true;
	}
	if (data[12] == (ETH_P_IPV6 >> 8) && data[13] == (ETH_P_IPV6 & 0xff)) {
		if (data + 14 + 40 > end || (h[0] >> 4) != 6 || h[6] != IPPROTO_TCP)
			return false;
		d->family = TETHER_AF_INET6;
		__builtin_memcpy(d->daddr, &h[24], 16);
		return true;
	}
	return false;
}

/* The slot of the `allowed` cache that a container's destination hashes to. */
static __always_inline struct tether_allowed *allowed_slot(__u64 id, const struct dest *d)
{
	__u32 x = (__u32)id ^ (__u32)(id >> 32) ^ d->daddr[0] ^ d->daddr[1] ^ d->daddr[2] ^
		  d->daddr[3];
	__u32 slot = (x * 0x9E3779B1u) >> (32 - TETHER_ALLOWED_BITS);

	return bpf_map_lookup_elem(&allowed, &slot);
}

static __always_inline bool allowed_is(const struct tether_allowed *a, __u64 id,
				       const struct dest *d)
{
	return a->cgroup_id == id && a->family == d->family && a->daddr[0] == d->daddr[0] &&
	       a->daddr[1] == d->daddr[1] && a->daddr[2] == d->daddr[2] &&
	       a->daddr[3] == d->daddr[3];
}

/*
 * A frame of container `id`, judged at its interfaces, that needs no lookup in its deny
 * rules: plain TCP (see plain_frame) to a destination the judge allowed it before. Else
 * `*remember` is the cache slot to fill if the judge lets this plain frame through.
 */
static __always_inline bool allowed_frame(struct __sk_buff *skb, __u64 id, struct dest *d,
					  struct tether_allowed **remember)
{
	if (!plain_frame(skb, d))
		return false;
	struct tether_allowed *a = allowed_slot(id, d);

	if (!a)
		return false;
	if (allowed_is(a, id, d))
		return true;
	*remember = a;
	return false;
}

static __always_inline int tc_handle(struct __sk_buff *skb, int dir)
{
	struct tether_if_key k = {
		.netns_cookie = skb_netns_key(skb),
		.ifindex = skb->ifindex,
	};

	__u32 slot = tether_tc_slot_of(k.netns_cookie, k.ifindex);
	struct tether_tc_slot *s = bpf_map_lookup_elem(&tc_slots, &slot);
	struct tether_iface *ifc;

	if (s && s->key.ifindex == k.ifindex && s->key.netns_cookie == k.netns_cookie)
		ifc = &s->iface;
	else
		ifc = bpf_map_lookup_elem(&tc_ifaces, &k);
	if (!ifc)
		return TC_ACT_UNSPEC;
	struct tether_counters *c = &ifc->counters;
	__u64 id = ifc->cgroup_id;

	if (dir == DIR_TX && (ifc->flags & TETHER_F_POLICY || counts_at_cgroup(ifc->flags))) {
		bool at_ifaces = (ifc->flags & (TETHER_F_POLICY | TETHER_F_JUDGE_AT_IFACES)) ==
				 (TETHER_F_POLICY | TETHER_F_JUDGE_AT_IFACES);
		/* Judged at its interfaces, only a plain TCP segment to a destination allowed
		 * before passes unjudged; else the cgroup egress program judged the container's
		 * own IP sockets' packets. */
		struct dest d = {};
		struct tether_allowed *remember = NULL;
		bool judge = at_ifaces ? !allowed_frame(skb, id, &d, &remember) :
					 (ifc->flags & TETHER_F_POLICY);
		bool own = false;

		if (counts_at_cgroup(ifc->flags) || (judge && !at_ifaces)) {
			bool ip_own = from_own_ip_socket(skb, id);

			if (!at_ifaces)
				judge = judge && !ip_own;
			/*
			 * A frame of the container's own packet socket: the cgroup programs never
			 * saw it, so where they count the container's packets it is counted here,
			 * in the container's counters as well as the interface's.
			 */
			own = counts_at_cgroup(ifc->flags) && !ip_own &&
			      bpf_skb_cgroup_id(skb) == id;
		}

		if (judge || own) {
			struct tether_cgroup *cg = lookup_cgroup(&id);

			if (cg && judge && (cg->config.flags & TETHER_F_POLICY)) {
				struct judged j = {};
				int v = judge_frame(skb, id, &j);

				if (v != JUDGE_PASS) {
					judged_drop(id, &cg->config, c, v, &j, TETHER_EV_DROP_TC,
						    TETHER_EV_REFUSE_TC, k.ifindex);
					if (own)
						cg->counters.drops++;
					return TC_ACT_SHOT;
				}
				if (remember) {
					remember->cgroup_id = id;
					remember->family = d.family;
					__builtin_memcpy(remember->daddr, d.daddr, sizeof(d.daddr));
				}
			}
			if (cg && own)
				count(&cg->counters, DIR_TX, skb->len);
		}
	}
	count(c, dir, skb->len);
	/* TC_ACT_UNSPEC (TCX_NEXT): let the next program on the interface decide. */
	return TC_ACT_UNSPEC;
}

SEC("tc")
int tether_tc_ingress(struct __sk_buff *skb)
{
	return tc_handle(skb, DIR_RX);
}

SEC("tc")
int tether_tc_egress(struct __sk_buff *skb)
{
	return tc_handle(skb, DIR_TX);
}
