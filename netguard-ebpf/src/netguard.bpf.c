// SPDX-License-Identifier: GPL-2.0-only
/*
 * netguard's kernel side: where network devices move between namespaces, get renamed,
 * registered and unregistered, and when a namespace hands its devices back on teardown.
 *
 * and why: a netns teardown, a driver unbinding or binding the NIC's bus device, or the
 * lower device of a vlan/macvlan going (its unregister runs inside the lower device's
 * NETDEV_UNREGISTER notification).
 *
 * Every probe exists twice, as kprobe/kretprobe and as fentry/fexit (one macro per shape
 * at the end writes both); the loader loads only one family and attaches each probe to the
 * first candidate kernel function that exists. Entry handlers keep what they saw in `calls`
 * (per thread and probe) for the return handler, so both families and candidates of
 * different arity share one logic.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "event.h"
#include "device_key.h"

char LICENSE[] SEC("license") = "GPL";

/* Longest lists walked in one call: nets in one cleanup batch, devices in one unregister. */
#define MAX_BATCH_NETS 128
#define MAX_UNREG_DEVS 512

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* the loader sets the size it wants */
} events SEC(".maps");

/* Records lost because the ring buffer was full; summed over CPUs by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

enum call {
	CALL_MOVE = 1,
	CALL_TEARDOWN = 2, /* its presence marks the thread's teardown window */
	CALL_RENAME = 3,
	CALL_REGISTER = 4,
	CALL_UNBIND = 5, /* a driver lets go of the bus device in `ptr` */
	CALL_BIND = 6,   /* a driver probes the bus device in `ptr` */
};

/* include/linux/netdevice.h, enum netdev_cmd: a fixed value since 2.6. */
#define NETDEV_UNREGISTER 6

struct call_key {
	__u64 pid_tgid;
	__u32 call;
	__u32 pad;
};

/* What an entry handler saw, for the matching return handler. */
struct call_state {
	__u64 ptr; /* the net_device, or the teardown's net_list / net */
	__u64 from_netns;
	__u64 to_netns;
	__u32 from_ifindex;
	__u32 batch; /* teardown: ptr is a list of nets, not one net */
	char from_name[NG_NAME_LEN];
	char req_name[NG_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct call_key);
	__type(value, struct call_state);
} calls SEC(".maps");

/*
 * The netdev notifications a thread is inside, innermost last: an unregister that runs
 * inside another device's NETDEV_UNREGISTER notification went because that device did.
 */
#define NOTIFY_DEPTH 8

struct notify_stack {
	__u32 depth; /* may exceed NOTIFY_DEPTH: only the outer ones are kept */
	__u32 pad;
	__u64 val[NOTIFY_DEPTH];
	__u64 dev[NOTIFY_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct notify_stack);
} notify SEC(".maps");

static __always_inline struct call_key call_key(__u32 call)
{
	struct call_key key = { .pid_tgid = bpf_get_current_pid_tgid(), .call = call };
	return key;
}

/* Keeps `ptr` for the return handler of `call` (and opens its window). */
static __always_inline int remember(__u32 call, const void *ptr)
{
	struct call_key key = call_key(call);
	struct call_state st = { .ptr = (__u64)ptr };

	bpf_map_update_elem(&calls, &key, &st, BPF_ANY);
	return 0;
}

static __always_inline bool in_teardown_window(void)
{
	struct call_key key = call_key(CALL_TEARDOWN);

	return bpf_map_lookup_elem(&calls, &key) != NULL;
}

static __always_inline __u64 net_inum(const struct net *net)
{
	return net ? BPF_CORE_READ(net, ns.inum) : 0;
}

static __always_inline struct net *dev_net(const struct net_device *dev)
{
	return BPF_CORE_READ(dev, nd_net.net);
}

/* A ring buffer record with the common fields set, or NULL (counted as dropped). */
static __always_inline struct ng_record *reserve(__u32 kind)
{
	struct ng_record *rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	__u64 pid_tgid;

	if (!rec) {
		__u32 zero = 0;
		__u64 *count = bpf_map_lookup_elem(&dropped, &zero);

		if (count)
			__sync_fetch_and_add(count, 1);
		return NULL;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	pid_tgid = bpf_get_current_pid_tgid();
	rec->kind = kind;
	rec->ts_ns = bpf_ktime_get_ns();
	rec->pid = (__u32)pid_tgid;
	rec->tgid = pid_tgid >> 32;
	rec->cause = in_teardown_window() ? NG_CAUSE_NETNS_TEARDOWN : NG_CAUSE_EXPLICIT;
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
	return rec;
}

/* The bus device a NIC sits on and its driver: what identifies the card across reloads. */
static __always_inline void fill_bus(struct ng_record *rec, const struct net_device *dev)
{
	const struct device *bus = BPF_CORE_READ(dev, dev.parent);
	const struct device_driver *drv;
	const char *text;

	if (!bus)
		return;
	rec->flags |= NG_F_BUS;
	text = BPF_CORE_READ(bus, kobj.name);
	if (text)
		bpf_probe_read_kernel_str(rec->bus_addr, sizeof(rec->bus_addr), text);
	drv = BPF_CORE_READ(bus, driver);
	text = drv ? BPF_CORE_READ(drv, name) : NULL;
	if (text)
		bpf_probe_read_kernel_str(rec->driver, sizeof(rec->driver), text);
}

static __always_inline void fill_device(struct ng_record *rec, const struct net_device *dev)
{
	const struct rtnl_link_ops *ops = BPF_CORE_READ(dev, rtnl_link_ops);
	__u8 len = BPF_CORE_READ(dev, addr_len);

	fill_bus(rec, dev);
	rec->flags |= NG_F_DEVICE;
	rec->device_key = device_key(dev);
	if (ops) {
		const char *kind = BPF_CORE_READ(ops, kind);

		if (kind)
			bpf_probe_read_kernel_str(rec->link_kind, sizeof(rec->link_kind), kind);
	}
	rec->perm_addr_len = len > NG_ADDR_LEN ? NG_ADDR_LEN : len;
	BPF_CORE_READ_INTO(&rec->perm_addr, dev, perm_addr);
}

static __always_inline void fill_from(struct ng_record *rec, const struct net_device *dev)
{
	rec->flags |= NG_F_FROM;
	BPF_CORE_READ_INTO(&rec->from_name, dev, name);
	rec->from_ifindex = BPF_CORE_READ(dev, ifindex);
	rec->from_netns = net_inum(dev_net(dev));
}

static __always_inline void fill_to(struct ng_record *rec, const struct net_device *dev)
{
	rec->flags |= NG_F_TO;
	BPF_CORE_READ_INTO(&rec->to_name, dev, name);
	rec->to_ifindex = BPF_CORE_READ(dev, ifindex);
	rec->to_netns = net_inum(dev_net(dev));
}

static __always_inline void fill_saved_from(struct ng_record *rec, const struct call_state *st)
{
	rec->flags |= NG_F_FROM;
	__builtin_memcpy(rec->from_name, st->from_name, sizeof(rec->from_name));
	rec->from_ifindex = st->from_ifindex;
	rec->from_netns = st->from_netns;
}

static __always_inline void save_from(struct call_state *st, const struct net_device *dev)
{
	st->ptr = (__u64)dev;
	BPF_CORE_READ_INTO(&st->from_name, dev, name);
	st->from_ifindex = BPF_CORE_READ(dev, ifindex);
	st->from_netns = net_inum(dev_net(dev));
}

/*
 * A netns is dying once its reference count dropped to zero (cleanup_net runs then).
 * Where the count field cannot be found, being inside a teardown window stands in.
 */
static __always_inline void fill_dying(struct ng_record *rec, const struct net *net)
{
	const void *ns = __builtin_preserve_access_index(&net->ns);
	int refs = 1;

	if (!net)
		return;
	if (bpf_core_field_exists(struct ns_common___ref, __ns_ref))
		refs = BPF_CORE_READ((const struct ns_common___ref *)ns, __ns_ref.refs.counter);
	else if (bpf_core_field_exists(struct ns_common___count, count))
		refs = BPF_CORE_READ((const struct ns_common___count *)ns, count.refs.counter);
	else
		refs = rec->cause == NG_CAUSE_NETNS_TEARDOWN ? 0 : 1;
	rec->flags |= NG_F_DYING_KNOWN;
	if (refs == 0)
		rec->flags |= NG_F_DYING;
}

/* The bus device a driver is (un)binding on this thread (`call` window), or 0. */
static __always_inline __u64 window_device(__u32 call)
{
	struct call_key key = call_key(call);
	struct call_state *st = bpf_map_lookup_elem(&calls, &key);

	return st ? st->ptr : 0;
}

static __always_inline bool on_bus(const struct net_device *dev, __u64 bus)
{
	return bus && (__u64)BPF_CORE_READ(dev, dev.parent) == bus;
}

/*
 * Why the devices of one unregister call go, looked up once per call (the verifier walks
 * the per-device loop body MAX_UNREG_DEVS times): the bus device being unbound, and the
 * device whose NETDEV_UNREGISTER notification this thread is inside (their parent).
 */
struct unreg_why {
	__u64 unbind_bus;
	__u64 parent;
	__u64 parent_key;
	__u32 parent_ifindex;
	__u32 pad;
	char parent_name[NG_NAME_LEN];
};

static __always_inline void unregister_why(struct unreg_why *why)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct notify_stack *stack = bpf_map_lookup_elem(&notify, &id);
	const struct net_device *parent;
	__u32 top;

	why->unbind_bus = window_device(CALL_UNBIND);
	if (!stack || stack->depth == 0 || stack->depth > NOTIFY_DEPTH)
		return;
	top = (stack->depth - 1) & (NOTIFY_DEPTH - 1);
	if (stack->val[top] != NETDEV_UNREGISTER)
		return;
	parent = (const struct net_device *)stack->dev[top];
	why->parent = (__u64)parent;
	why->parent_key = device_key(parent);
	why->parent_ifindex = BPF_CORE_READ(parent, ifindex);
	BPF_CORE_READ_INTO(&why->parent_name, parent, name);
}

/*
 * A netns teardown says it all; else its driver letting go of its bus device; else its
 * lower device going (nested in that one's notification); else explicit.
 */
static __always_inline void unregister_cause(struct ng_record *rec, const struct net_device *dev,
					     const struct unreg_why *why)
{
	if (rec->cause == NG_CAUSE_NETNS_TEARDOWN)
		return;
	if (on_bus(dev, why->unbind_bus)) {
		rec->cause = NG_CAUSE_DRIVER_UNBIND;
		return;
	}
	if (why->parent && why->parent != (__u64)dev) {
		rec->cause = NG_CAUSE_PARENT_GONE;
		rec->flags |= NG_F_PARENT;
		rec->parent_key = why->parent_key;
		rec->parent_ifindex = why->parent_ifindex;
		__builtin_memcpy(rec->parent_name, why->parent_name, sizeof(rec->parent_name));
	}
}

/* ---- netns move ---------------------------------------------------------------- */

static __always_inline int move_entry(const struct net_device *dev, const struct net *net)
{
	struct call_key key = call_key(CALL_MOVE);
	struct call_state st = {};

	save_from(&st, dev);
	st.to_netns = net_inum(net);
	bpf_map_update_elem(&calls, &key, &st, BPF_ANY);
	return 0;
}

/*
 * A move or rename returned: the device before (as its entry saw it) and after. A move
 * names the netns it was asked to go to even on failure; a failed rename keeps its name,
 * so the record names the one asked for.
 */
static __always_inline int change_return(__u32 call, __u32 kind, int ret)
{
	struct call_key key = call_key(call);
	struct call_state *st = bpf_map_lookup_elem(&calls, &key);
	const struct net_device *dev;
	struct ng_record *rec;

	if (!st)
		return 0;
	dev = (const struct net_device *)st->ptr;
	rec = reserve(kind);
	if (rec) {
		fill_device(rec, dev);
		fill_saved_from(rec, st);
		fill_to(rec, dev);
		if (st->to_netns)
			rec->to_netns = st->to_netns;
		if (ret != 0 && st->req_name[0])
			__builtin_memcpy(rec->to_name, st->req_name, sizeof(rec->to_name));
		rec->flags |= NG_F_RESULT;
		rec->result = ret;
		bpf_ringbuf_submit(rec, 0);
	}
	bpf_map_delete_elem(&calls, &key);
	return 0;
}

/* ---- netns teardown window ------------------------------------------------------- */

static __always_inline void emit_teardown_net(__u32 kind, const struct net *net)
{
	struct ng_record *rec = reserve(kind);

	if (!rec)
		return;
	rec->flags |= NG_F_FROM;
	rec->from_netns = net_inum(net);
	bpf_ringbuf_submit(rec, 0);
}

/* One record per net in the window: a cleanup batch links its nets by net->exit_list. */
static __always_inline void emit_teardown(__u32 kind, const struct call_state *st)
{
	const struct list_head *head = (const struct list_head *)st->ptr;
	const struct list_head *pos;
	__u64 offset = bpf_core_field_offset(struct net, exit_list);

	if (!st->batch) {
		emit_teardown_net(kind, (const struct net *)st->ptr);
		return;
	}
	pos = BPF_CORE_READ(head, next);
#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_BATCH_NETS; i++) {
		if (!pos || pos == head)
			break;
		emit_teardown_net(kind, (const struct net *)((const char *)pos - offset));
		pos = BPF_CORE_READ(pos, next);
	}
}

static __always_inline int teardown_entry(const void *ptr, __u32 batch)
{
	struct call_key key = call_key(CALL_TEARDOWN);
	struct call_state st = { .ptr = (__u64)ptr, .batch = batch };

	/* The window opens before the records, so they carry cause netns-teardown too. */
	bpf_map_update_elem(&calls, &key, &st, BPF_ANY);
	emit_teardown(NG_TEARDOWN_BEGIN, &st);
	return 0;
}

static __always_inline int teardown_return(void)
{
	struct call_key key = call_key(CALL_TEARDOWN);
	struct call_state *st = bpf_map_lookup_elem(&calls, &key);

	if (!st)
		return 0;
	emit_teardown(NG_TEARDOWN_END, st);
	bpf_map_delete_elem(&calls, &key);
	return 0;
}

/* ---- rename -------------------------------------------------------------------- */

static __always_inline int rename_entry(const struct net_device *dev, const char *newname)
{
	struct call_key key = call_key(CALL_RENAME);
	struct call_state st = {};

	save_from(&st, dev);
	bpf_probe_read_kernel_str(st.req_name, sizeof(st.req_name), newname);
	bpf_map_update_elem(&calls, &key, &st, BPF_ANY);
	return 0;
}

/* ---- register ------------------------------------------------------------------- */

/* Read on return: only then are the name ("eth%d" expanded) and ifindex final. */
static __always_inline int register_return(int ret)
{
	struct call_key key = call_key(CALL_REGISTER);
	struct call_state *st = bpf_map_lookup_elem(&calls, &key);
	const struct net_device *dev;
	struct ng_record *rec;

	if (!st)
		return 0;
	dev = (const struct net_device *)st->ptr;
	if (ret == 0) {
		begin_lifetime(dev);
		rec = reserve(NG_REGISTER);
		if (rec) {
			fill_device(rec, dev);
			fill_to(rec, dev);
			if (rec->cause != NG_CAUSE_NETNS_TEARDOWN &&
			    on_bus(dev, window_device(CALL_BIND)))
				rec->cause = NG_CAUSE_DRIVER_BIND;
			rec->flags |= NG_F_RESULT;
			bpf_ringbuf_submit(rec, 0);
		}
	}
	bpf_map_delete_elem(&calls, &key);
	return 0;
}

/* ---- unregister ------------------------------------------------------------------ */

static __always_inline void emit_unregister(const struct net_device *dev,
					    const struct unreg_why *why)
{
	struct ng_record *rec = reserve(NG_UNREGISTER);

	if (rec) {
		fill_device(rec, dev);
		fill_from(rec, dev);
		fill_dying(rec, dev_net(dev));
		unregister_cause(rec, dev, why);
		bpf_ringbuf_submit(rec, 0);
	}
}

static __always_inline int unregister_one(const struct net_device *dev)
{
	struct unreg_why why = {};

	unregister_why(&why);
	emit_unregister(dev, &why);
	return 0;
}

/* The devices of one unregister batch are linked by dev->unreg_list. */
static __always_inline int unregister_many(const struct list_head *head)
{
	const struct list_head *pos = BPF_CORE_READ(head, next);
	__u64 offset = bpf_core_field_offset(struct net_device, unreg_list);
	struct unreg_why why = {};

	unregister_why(&why);
#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_UNREG_DEVS; i++) {
		if (!pos || pos == head)
			break;
		emit_unregister((const struct net_device *)((const char *)pos - offset), &why);
		pos = BPF_CORE_READ(pos, next);
	}
	return 0;
}

/* ---- driver unbind / bind windows -------------------------------------------------- */

static __always_inline int window_return(__u32 call)
{
	struct call_key key = call_key(call);

	bpf_map_delete_elem(&calls, &key);
	return 0;
}

/* ---- netdev notifications ----------------------------------------------------------- */

static __always_inline int notify_entry(unsigned long val, const struct netdev_notifier_info *info)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct notify_stack fresh = {};
	struct notify_stack *stack = bpf_map_lookup_elem(&notify, &id);
	__u32 at;

	if (!stack) {
		bpf_map_update_elem(&notify, &id, &fresh, BPF_NOEXIST);
		stack = bpf_map_lookup_elem(&notify, &id);
		if (!stack)
			return 0;
	}
	at = stack->depth;
	stack->depth = at + 1;
	if (at < NOTIFY_DEPTH) {
		stack->val[at & (NOTIFY_DEPTH - 1)] = val;
		stack->dev[at & (NOTIFY_DEPTH - 1)] = (__u64)BPF_CORE_READ(info, dev);
	}
	return 0;
}

static __always_inline int notify_return(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct notify_stack *stack = bpf_map_lookup_elem(&notify, &id);

	if (!stack)
		return 0;
	if (stack->depth <= 1)
		bpf_map_delete_elem(&notify, &id);
	else
		stack->depth -= 1;
	return 0;
}

/* ---- the programs: one macro per shape writes the kprobe and the fentry twin ------- */

/* fexit reads the return value with bpf_get_func_ret, so any candidate's arity works. */
static __always_inline long func_ret(void *ctx)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return (long)ret;
}

/* kp_NAME and fe_NAME: `body` sees the function's first arguments, typed as listed. */
#define ENTRY(name, body, ...)                                                            \
	SEC("kprobe") int BPF_KPROBE(kp_##name, ##__VA_ARGS__) { return body; }          \
	SEC("fentry") int BPF_PROG(fe_##name, ##__VA_ARGS__) { return body; }

/* krp_NAME and fx_NAME: `body` sees the function's return value as `int ret`. */
#define RETURN_VALUE(name, body)                                                          \
	SEC("kretprobe") int BPF_KRETPROBE(krp_##name, int ret) { return body; }          \
	SEC("fexit") int fx_##name(__u64 *ctx) { int ret = (int)func_ret(ctx); return body; }

/* krp_NAME and fx_NAME for a function whose return value does not matter. */
#define RETURN_VOID(name, body)                                                           \
	SEC("kretprobe") int BPF_KRETPROBE(krp_##name) { return body; }                   \
	SEC("fexit") int fx_##name(__u64 *ctx) { return body; }

ENTRY(move, move_entry(dev, net), const struct net_device *dev, const struct net *net)
RETURN_VALUE(move, change_return(CALL_MOVE, NG_MOVE, ret))

ENTRY(exit_batch, teardown_entry(net_list, 1), const struct list_head *net_list)
RETURN_VOID(exit_batch, teardown_return())

ENTRY(exit_net, teardown_entry(net, 0), const struct net *net)
RETURN_VOID(exit_net, teardown_return())

ENTRY(rename, rename_entry(dev, newname), const struct net_device *dev, const char *newname)
RETURN_VALUE(rename, change_return(CALL_RENAME, NG_RENAME, ret))

ENTRY(register, remember(CALL_REGISTER, dev), const struct net_device *dev)
RETURN_VALUE(register, register_return(ret))

ENTRY(unreg_many, unregister_many(head), const struct list_head *head)

ENTRY(unreg_queue, unregister_one(dev), const struct net_device *dev)

ENTRY(unbind, remember(CALL_UNBIND, dev), const struct device *dev)
RETURN_VOID(unbind, window_return(CALL_UNBIND))

ENTRY(bind, remember(CALL_BIND, dev), const struct device *dev)
RETURN_VOID(bind, window_return(CALL_BIND))

ENTRY(notify, notify_entry(val, info), unsigned long val, const struct netdev_notifier_info *info)
RETURN_VOID(notify, notify_return())
