/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The record the probes put into the ring buffer, shared with userspace
 * (netguard/src/trace/ebpf/record.rs mirrors it as a #[repr(C)] struct).
 * Fixed size, explicit padding, no pointers: change both sides together.
 */
#ifndef NETGUARD_EVENT_H
#define NETGUARD_EVENT_H

#define NG_NAME_LEN 16 /* IFNAMSIZ */
#define NG_COMM_LEN 16 /* TASK_COMM_LEN */
#define NG_KIND_LEN 16 /* longest rtnl_link_ops->kind we keep */
#define NG_ADDR_LEN 32 /* MAX_ADDR_LEN */
#define NG_DRIVER_LEN 16 /* longest driver name we keep */
#define NG_BUS_LEN 32  /* dev_name() of the bus device: "0000:00:04.0" on PCI */

enum ng_kind {
	NG_MOVE = 1,
	NG_TEARDOWN_BEGIN = 2,
	NG_TEARDOWN_END = 3,
	NG_RENAME = 4,
	NG_REGISTER = 5,
	NG_UNREGISTER = 6,
};

enum ng_cause {
	NG_CAUSE_EXPLICIT = 0,
	NG_CAUSE_NETNS_TEARDOWN = 1,
	NG_CAUSE_PARENT_GONE = 2,   /* parent_* name the lower device */
	NG_CAUSE_DRIVER_UNBIND = 3, /* driver and bus_addr name them */
	NG_CAUSE_DRIVER_BIND = 4,
};

/* Which optional parts of a record are filled in. */
enum ng_flags {
	NG_F_DEVICE = 1 << 0,      /* device_key, link_kind, perm_addr */
	NG_F_FROM = 1 << 1,        /* from_name, from_ifindex, from_netns */
	NG_F_TO = 1 << 2,          /* to_name, to_ifindex, to_netns */
	NG_F_RESULT = 1 << 3,      /* result */
	NG_F_DYING_KNOWN = 1 << 4, /* NG_F_DYING is meaningful */
	NG_F_DYING = 1 << 5,       /* the device's netns is being destroyed */
	NG_F_PARENT = 1 << 6,      /* parent_key, parent_ifindex, parent_name */
	NG_F_BUS = 1 << 7,         /* bus_addr, driver (empty when none is bound) */
};

struct ng_record {
	__u32 kind;          /* enum ng_kind */
	__u32 flags;         /* enum ng_flags */
	__u64 ts_ns;         /* CLOCK_MONOTONIC */
	__u64 device_key;    /* keyed hash of the net_device address */
	__u64 from_netns;    /* nsfs inode (net->ns.inum) */
	__u64 to_netns;
	__u32 pid;
	__u32 tgid;
	__s32 result;        /* 0 or -errno */
	__u32 from_ifindex;
	__u32 to_ifindex;
	__u8 cause;          /* enum ng_cause */
	__u8 perm_addr_len;
	__u8 pad[2];
	char comm[NG_COMM_LEN];
	char from_name[NG_NAME_LEN];
	char to_name[NG_NAME_LEN];
	char link_kind[NG_KIND_LEN];
	__u8 perm_addr[NG_ADDR_LEN];
	__u64 parent_key;
	__u32 parent_ifindex;
	__u32 pad2;
	char parent_name[NG_NAME_LEN];
	char driver[NG_DRIVER_LEN];
	char bus_addr[NG_BUS_LEN];
};

_Static_assert(sizeof(struct ng_record) == 240, "ng_record layout changed: update record.rs");

#endif
