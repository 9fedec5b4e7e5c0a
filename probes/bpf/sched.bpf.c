// SPDX-License-Identifier: (MIT OR GPL-2.0)
/* Run-queue latency, off-CPU time and context switches of one process's threads, by role.
 *
 * Attached as BTF tracepoints (tp_btf: no tracefs needed) to sched_wakeup, sched_wakeup_new and
 * sched_switch. A thread's timestamps live in task-local storage (no hashing, no deletes: the
 * cheapest per-event path measured, see ../shared/reference/ebpf-aya.md section 6). Everything
 * is aggregated in the kernel into per-CPU arrays, one `struct role_stats` per role; user space
 * sums the CPUs and never clears them (the values are cumulative, like Prometheus counters). */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sched.h"

#define TASK_RUNNING 0

/* The process to watch (0: every process, for tests and comparisons). Set by the loader. */
const volatile __u32 targ_tgid = 0;

struct stamps {
	__u64 enqueued; /* when it became runnable (0: not waiting) */
	__u64 off_since; /* when it last left the CPU (0: unknown) */
	__u64 preempted; /* 1 if it left the CPU still runnable */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct stamps);
} stamps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_ROLES);
	__type(key, __u32);
	__type(value, struct role_stats);
} roles SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_STATS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline bool watched(struct task_struct *p)
{
	return !targ_tgid || p->tgid == targ_tgid;
}

/* The role from the thread name: "vigil-e..." engine, "vigil-h..." http, "vigil-c..." compute.
 * Direct byte loads through the BTF pointer: no helper call. */
static __always_inline __u32 role_of(struct task_struct *p)
{
	if (p->comm[0] != 'v' || p->comm[1] != 'i' || p->comm[2] != 'g' || p->comm[3] != 'i' ||
	    p->comm[4] != 'l' || p->comm[5] != '-')
		return ROLE_OTHER;
	switch (p->comm[6]) {
	case 'e':
		return ROLE_ENGINE;
	case 'h':
		return ROLE_HTTP;
	case 'c':
		return ROLE_COMPUTE;
	default:
		return ROLE_OTHER;
	}
}

/* Direct loads through the BTF pointer (tp_btf allows them): cheaper than BPF_CORE_READ's
 * probe-read helper, and still relocated by CO-RE. */
static __always_inline long task_state(struct task_struct *p)
{
	if (bpf_core_field_exists(p->__state))
		return p->__state;
	return ((struct task_struct___pre_5_14 *)p)->state;
}

static __always_inline struct stamps *stamps_of(struct task_struct *p, __u64 flags)
{
	struct stamps *s = bpf_task_storage_get(&stamps, p, 0, flags);
	if (!s && flags) {
		__u32 k = STAT_NO_STORAGE;
		__u64 *n = bpf_map_lookup_elem(&stats, &k);
		if (n)
			*n += 1;
	}
	return s;
}

static __always_inline struct role_stats *stats_of(__u32 role)
{
	return bpf_map_lookup_elem(&roles, &role);
}

static __always_inline __u32 log2_slot(__u64 us)
{
	__u32 slot = 0;
	/* floor(log2(us)); 0 and 1 both give 0. Unrolled binary search, 5 steps. */
	if (us >= (1ULL << 32)) { us >>= 32; slot += 32; }
	if (us >= (1ULL << 16)) { us >>= 16; slot += 16; }
	if (us >= (1ULL << 8)) { us >>= 8; slot += 8; }
	if (us >= (1ULL << 4)) { us >>= 4; slot += 4; }
	if (us >= (1ULL << 2)) { us >>= 2; slot += 2; }
	if (us >= (1ULL << 1)) { slot += 1; }
	return slot < NR_SLOTS - 1 ? slot : NR_SLOTS - 1;
}

static __always_inline int on_wakeup(struct task_struct *p)
{
	if (!watched(p))
		return 0;
	struct stamps *s = stamps_of(p, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s)
		s->enqueued = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	return on_wakeup(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new, struct task_struct *p)
{
	return on_wakeup(p);
}

/* Only the first three arguments: the fourth (prev_state) appeared in 5.18. */
SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	bool prev_watched = watched(prev);
	bool next_watched = watched(next);
	if (!prev_watched && !next_watched)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (prev_watched) {
		/* Only stamps here: the switch is counted, by role, when the task runs again, so this
		 * path needs no role and no map lookup beyond the task's own storage. */
		struct stamps *s = stamps_of(prev, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (s) {
			/* Preempted (or yielded while runnable): it waits on the run queue from now. */
			bool runnable = preempt || task_state(prev) == TASK_RUNNING;
			s->enqueued = runnable ? now : 0;
			s->preempted = runnable;
			s->off_since = now;
		}
	}

	if (next_watched) {
		/* No storage yet: nothing was stamped, so there is nothing to measure. */
		struct stamps *s = stamps_of(next, 0);
		if (!s)
			return 0;
		struct role_stats *r = stats_of(role_of(next));
		if (r) {
			if (s->enqueued && now > s->enqueued) {
				__u64 ns = now - s->enqueued;
				r->slots[log2_slot(ns / 1000)] += 1;
				r->runq_ns += ns;
			}
			if (s->off_since && now > s->off_since) {
				r->offcpu_ns += now - s->off_since;
				if (s->preempted)
					r->involuntary += 1;
				else
					r->voluntary += 1;
			}
		}
		s->enqueued = 0;
		s->off_since = 0;
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
