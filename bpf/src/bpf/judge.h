/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The packet judge of a container under a policy: where is this packet headed?
 *
 * Not only the IP header's destination decides. A source route (IPv4 LSRR or SSRR
 * option, IPv6 routing header) sends the packet on to addresses the header does not
 * name, and a tunnel (IPIP, IPv6 in IPv4 or IPv6, GRE) carries a packet of its own to
 * its own destination. A container with CAP_NET_RAW builds any of them (raw sockets
 * with IP_HDRINCL, packet sockets), and a TCP socket with IP_OPTIONS or IPV6_RTHDR
 * sends every segment source-routed. So, under a policy:
 * - the outer destination is judged against the deny rules, and so is the destination
 *   of a packet tunnelled in it (one level: a tunnel in a tunnel is refused);
 * - a source-routed packet is refused whatever its hops (judging every hop would let
 *   a host that honours source routes take it anywhere after the first);
 * - a header the judge cannot read whole (truncated, an extension-header chain longer
 *   than it walks, a tunnel whose inner header is not in the first fragment, GRE it
 *   does not know) is refused: what cannot be judged does not leave.
 * Later fragments (IPv4 offset or IPv6 fragment offset not 0) are judged by their
 * outer destination only; their first fragment carried the headers that decide.
 *
 * All reads are bpf_skb_load_bytes() at offsets from where the program's data starts
 * (the network header for cgroup_skb, the MAC header for TC), never variable offsets
 * into the stack (refused by the verifier before Linux 5.12).
 *
 * Included by tether.bpf.c after denied4() and denied6().
 */
#ifndef TETHER_JUDGE_H
#define TETHER_JUDGE_H

#define JUDGE_PASS 0
#define JUDGE_DENY 1	/* a destination is denied */
#define JUDGE_REFUSE 2	/* source-routed, or headers that cannot be judged */

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_TEB_ 0x6558

#define IPOPT_END_ 0
#define IPOPT_NOOP_ 1
#define IPOPT_LSRR_ 131
#define IPOPT_SSRR_ 137

#define NEXTHDR_HOP_ 0
#define NEXTHDR_ROUTING_ 43
#define NEXTHDR_FRAGMENT_ 44
#define NEXTHDR_AUTH_ 51
#define NEXTHDR_DEST_ 60
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define IPPROTO_GRE_ 47

/* IPv4 options walked (each at least one byte, 40 bytes at most). */
#define JUDGE_MAX_OPTS 40
/* IPv6 extension headers walked before giving up (and refusing). */
#define JUDGE_MAX_EXT 8
/* VLAN tags skipped in front of an Ethernet payload (802.1Q, QinQ). */
#define JUDGE_MAX_VLAN 2

/* What follows a judged header. */
#define NEXT_NONE 0
#define NEXT_IPV4 1
#define NEXT_IPV6 2
#define NEXT_GRE 3

/* What the judge saw: the destination it reports in events, and the protocol. */
struct judged {
	__u32 daddr[4];
	__u16 family;
	__u16 proto;
};

struct next_hdr {
	__u32 off;
	__u32 kind;
};

static __always_inline void next_of(__u8 proto, __u32 off, struct next_hdr *n)
{
	n->off = off;
	if (proto == IPPROTO_IPIP_)
		n->kind = NEXT_IPV4;
	else if (proto == IPPROTO_IPV6_)
		n->kind = NEXT_IPV6;
	else if (proto == IPPROTO_GRE_)
		n->kind = NEXT_GRE;
	else
		n->kind = NEXT_NONE;
}

/* IPv4 options from `off` for `len` bytes: refuses a source route or a malformed option. */
static __always_inline int judge_ipv4_options(struct __sk_buff *skb, __u32 off, __u32 len)
{
	__u32 i = 0;

	for (int n = 0; n < JUDGE_MAX_OPTS; n++) {
		__u8 o[2] = {};

		if (i >= len)
			return JUDGE_PASS;
		if (bpf_skb_load_bytes(skb, off + i, o, 1) < 0)
			return JUDGE_REFUSE;
		if (o[0] == IPOPT_END_)
			return JUDGE_PASS;
		if (o[0] == IPOPT_NOOP_) {
			i = (i + 1) & 0x3f;
			continue;
		}
		if (o[0] == IPOPT_LSRR_ || o[0] == IPOPT_SSRR_)
			return JUDGE_REFUSE;
		if (i + 2 > len || bpf_skb_load_bytes(skb, off + i, o, 2) < 0 || o[1] < 2)
			return JUDGE_REFUSE;
		i += o[1];
		if (i >= len)
			return i == len ? JUDGE_PASS : JUDGE_REFUSE;
		/* i < len <= 40: the mask changes nothing but gives every path through the
		 * loop one state at its head, which the verifier then walks once. */
		i &= 0x3f;
	}
	return JUDGE_REFUSE;
}

/* The IPv4 header at `off`: its destination, options and payload. */
static __always_inline int judge_ipv4(struct __sk_buff *skb, __u32 off, __u64 cgid,
				      struct judged *j, struct next_hdr *next)
{
	__u8 hdr[20];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return JUDGE_REFUSE;
	__u32 ihl = (hdr[0] & 0x0f) * 4;

	if ((hdr[0] >> 4) != 4 || ihl < 20)
		return JUDGE_REFUSE;
	__builtin_memcpy(&j->daddr[0], &hdr[16], 4);
	j->daddr[1] = j->daddr[2] = j->daddr[3] = 0;
	j->family = TETHER_AF_INET;
	j->proto = hdr[9];
	if (denied4(cgid, j->daddr[0]))
		return JUDGE_DENY;
	if (ihl > 20 && judge_ipv4_options(skb, off + 20, ihl - 20) != JUDGE_PASS)
		return JUDGE_REFUSE;
	/* A later fragment carries no header of its payload. */
	if ((((__u16)hdr[6] << 8) | hdr[7]) & 0x1fff)
		return JUDGE_PASS;
	next_of(hdr[9], off + ihl, next);
	return JUDGE_PASS;
}

/* The IPv6 header at `off` and its extension headers. */
static __always_inline int judge_ipv6(struct __sk_buff *skb, __u32 off, __u64 cgid,
				      struct judged *j, struct next_hdr *next)
{
	__u8 hdr[40];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return JUDGE_REFUSE;
	if ((hdr[0] >> 4) != 6)
		return JUDGE_REFUSE;
	__builtin_memcpy(j->daddr, &hdr[24], 16);
	j->family = TETHER_AF_INET6;
	j->proto = hdr[6];
	if (denied6(cgid, j->daddr))
		return JUDGE_DENY;

	__u8 nexthdr = hdr[6];
	__u32 at = off + 40;

	for (int n = 0; n < JUDGE_MAX_EXT; n++) {
		__u8 ext[4];

		if (nexthdr == NEXTHDR_ROUTING_)
			return JUDGE_REFUSE;
		if (nexthdr != NEXTHDR_HOP_ && nexthdr != NEXTHDR_DEST_ &&
		    nexthdr != NEXTHDR_FRAGMENT_ && nexthdr != NEXTHDR_AUTH_) {
			j->proto = nexthdr;
			next_of(nexthdr, at, next);
			return JUDGE_PASS;
		}
		if (bpf_skb_load_bytes(skb, at, ext, sizeof(ext)) < 0)
			return JUDGE_REFUSE;
		if (nexthdr == NEXTHDR_FRAGMENT_) {
			/* A later fragment: nothing more of its chain to read. */
			if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8)
				return JUDGE_PASS;
			at += 8;
		} else if (nexthdr == NEXTHDR_AUTH_) {
			at += ((__u32)ext[1] + 2) * 4;
		} else {
			at += ((__u32)ext[1] + 1) * 8;
		}
		/* A chain past the first 2 KiB is not walked; below that the mask changes
		 * nothing but gives every path one state at the loop's head. */
		if (at >= 2048)
			return JUDGE_REFUSE;
		at &= 0x7ff;
		nexthdr = ext[0];
	}
	return JUDGE_REFUSE;
}

/* The GRE header at `next->off`: where its payload starts and what it is. */
static __always_inline int judge_gre(struct __sk_buff *skb, struct next_hdr *next)
{
	__u8 gre[4];

	if (bpf_skb_load_bytes(skb, next->off, gre, sizeof(gre)) < 0)
		return JUDGE_REFUSE;
	/* Version 0 only; C, K and S add four bytes each, routing (R) is refused. */
	if ((gre[1] & 0x07) || (gre[0] & 0x40))
		return JUDGE_REFUSE;
	__u32 at = next->off + 4;

	if (gre[0] & 0x80)
		at += 4;
	if (gre[0] & 0x20)
		at += 4;
	if (gre[0] & 0x10)
		at += 4;
	__u16 type = ((__u16)gre[2] << 8) | gre[3];

	if (type == ETH_P_TEB_) {
		/* Transparent Ethernet bridging: an Ethernet frame, no VLAN tag. */
		__u8 t[2];

		if (bpf_skb_load_bytes(skb, at + 12, t, sizeof(t)) < 0)
			return JUDGE_REFUSE;
		type = ((__u16)t[0] << 8) | t[1];
		at += sizeof(struct ethhdr);
	}
	next->off = at;
	if (type == ETH_P_IP)
		next->kind = NEXT_IPV4;
	else if (type == ETH_P_IPV6)
		next->kind = NEXT_IPV6;
	else
		return JUDGE_REFUSE;
	return JUDGE_PASS;
}

/* One IP header (IPv4 or IPv6, by `kind`) at `n->off`; `n` becomes what follows. */
static __always_inline int judge_ip(struct __sk_buff *skb, struct next_hdr *n, __u64 cgid,
				    struct judged *j)
{
	__u32 kind = n->kind;
	__u32 off = n->off;

	n->kind = NEXT_NONE;
	if (kind == NEXT_IPV4)
		return judge_ipv4(skb, off, cgid, j, n);
	if (kind == NEXT_IPV6)
		return judge_ipv6(skb, off, cgid, j, n);
	return JUDGE_PASS;
}

/*
 * Judges the IP packet of `kind` (NEXT_IPV4, NEXT_IPV6) at `off`, and the packet it
 * tunnels. `j` says the destination that decided (the inner one when that was denied).
 */
static __always_inline int judge_packet(struct __sk_buff *skb, __u32 off, __u32 kind, __u64 cgid,
					struct judged *j)
{
	struct next_hdr n = { .off = off, .kind = kind };
	int v = judge_ip(skb, &n, cgid, j);

	if (v != JUDGE_PASS || n.kind == NEXT_NONE)
		return v;
	if (n.kind == NEXT_GRE && judge_gre(skb, &n) != JUDGE_PASS)
		return JUDGE_REFUSE;
	struct judged inner = {};

	v = judge_ip(skb, &n, cgid, &inner);
	if (v == JUDGE_DENY)
		__builtin_memcpy(j, &inner, sizeof(inner));
	if (v != JUDGE_PASS)
		return v;
	/* A tunnel in a tunnel is not walked. */
	return n.kind == NEXT_NONE ? JUDGE_PASS : JUDGE_REFUSE;
}

/*
 * Judges an Ethernet frame (TC): its type is read from the frame, not taken from the
 * socket that sent it (a packet socket names any protocol it likes), past up to two
 * VLAN tags. A frame that is not IP passes.
 */
static __always_inline int judge_frame(struct __sk_buff *skb, __u64 cgid, struct judged *j)
{
	__u32 off = 12;
	__u32 kind = NEXT_NONE;

	for (int n = 0; n <= JUDGE_MAX_VLAN; n++) {
		__u8 t[2];

		if (bpf_skb_load_bytes(skb, off, t, sizeof(t)) < 0)
			return JUDGE_REFUSE;
		__u16 type = ((__u16)t[0] << 8) | t[1];

		if (type == ETH_P_IP) {
			kind = NEXT_IPV4;
			break;
		}
		if (type == ETH_P_IPV6) {
			kind = NEXT_IPV6;
			break;
		}
		if (type != ETH_P_8021Q_ && type != ETH_P_8021AD_)
			return JUDGE_PASS;
		off += 4;
	}
	/* More tags than a container's frames carry. */
	if (kind == NEXT_NONE)
		return JUDGE_REFUSE;
	return judge_packet(skb, off + 2, kind, cgid, j);
}

#endif /* TETHER_JUDGE_H */
