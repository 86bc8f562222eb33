/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The few kernel types netguard's probes read, instead of a generated vmlinux.h.
 * Structs carry preserve_access_index so every field access is a CO-RE relocation
 * that the loader resolves against the running kernel's BTF (6.1 ... 6.18).
 * Only the fields read are declared; their order and offsets here do not matter.
 */
#ifndef NETGUARD_KERNEL_TYPES_H
#define NETGUARD_KERNEL_TYPES_H

/* Tells bpf_tracing.h to use the kernel's pt_regs field names (di, si, ax, ...). */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* The uapi constants the maps use (linux/bpf.h, fixed ABI). */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

/* x86-64 kprobe context; a fixed ABI layout, so no relocation needed. */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct list_head {
	struct list_head *next;
	struct list_head *prev;
};

typedef struct {
	int counter;
} atomic_t;

typedef struct refcount_struct {
	atomic_t refs;
} refcount_t;

struct ns_common {
	unsigned int inum;
};

/* The netns reference count was ns_common.count up to 6.17 ... */
struct ns_common___count {
	refcount_t count;
};

/* ... and is ns_common.__ns_ref from 6.18 on. */
struct ns_common___ref {
	refcount_t __ns_ref;
};

struct net {
	struct ns_common ns;
	struct list_head exit_list; /* links the nets of one cleanup batch */
};

typedef struct {
	struct net *net;
} possible_net_t;

struct rtnl_link_ops {
	const char *kind;
};

struct kobject {
	const char *name;
};

struct device_driver {
	const char *name;
};

/* A bus device (a PCI function, ...): the parent of a NIC's net_device. */
struct device {
	struct kobject kobj;
	struct device *parent;
	struct device_driver *driver;
};

struct net_device;

struct netdev_notifier_info {
	struct net_device *dev;
};

struct net_device {
	char name[16];
	struct device dev; /* dev.parent is the bus device, NULL for virtual links */
	int ifindex;
	possible_net_t nd_net;
	struct list_head unreg_list; /* links the devices of one unregister batch */
	unsigned char perm_addr[32];
	unsigned char addr_len;
	const struct rtnl_link_ops *rtnl_link_ops;
};

#pragma clang attribute pop

#endif
