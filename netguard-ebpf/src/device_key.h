/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Device keys: a stable name for one net_device across renames and moves that does not
 * leak kernel pointers. Included once, by netguard.bpf.c.
 */
#ifndef NETGUARD_DEVICE_KEY_H
#define NETGUARD_DEVICE_KEY_H

/* SipHash key for device keys; the loader writes a random one before load. */
const volatile __u64 device_hash_key[2] = { 0, 0 };

/*
 * A net_device's address is reused once it is freed, so each device registered while
 * tracing gets a lifetime number, and the key hashes address and lifetime together.
 * Devices that were there before tracing started have lifetime 0. A lifetime outlives its
 * device's unregister (uppers unregistered after it name it as their parent by its key) until
 * the address is registered again or the LRU map needs the room.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);   /* net_device address */
	__type(value, __u64); /* lifetime */
} lifetimes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_lifetime SEC(".maps");

/* SipHash-2-4 of (address, lifetime): a stable key that does not leak kernel pointers. */
#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                           \
	do {                                                                               \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                   \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                      \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                      \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                   \
	} while (0)
#define SIPCOMPRESS(m)                                                                     \
	do {                                                                               \
		v3 ^= (m);                                                                 \
		SIPROUND;                                                                  \
		SIPROUND;                                                                  \
		v0 ^= (m);                                                                 \
	} while (0)

static __always_inline __u64 device_key(const struct net_device *dev)
{
	__u64 addr = (__u64)dev;
	__u64 *lifetime = bpf_map_lookup_elem(&lifetimes, &addr);
	__u64 k0 = device_hash_key[0], k1 = device_hash_key[1];
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;

	SIPCOMPRESS(addr);
	SIPCOMPRESS(lifetime ? *lifetime : 0);
	SIPCOMPRESS(16ULL << 56); /* the message length, in the last block */
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline void begin_lifetime(const struct net_device *dev)
{
	__u64 addr = (__u64)dev;
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(&last_lifetime, &zero);
	__u64 lifetime;

	if (!last)
		return;
	lifetime = __sync_fetch_and_add(last, 1) + 1;
	bpf_map_update_elem(&lifetimes, &addr, &lifetime, BPF_ANY);
}

#endif
