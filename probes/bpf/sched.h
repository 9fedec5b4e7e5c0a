/* Layouts shared by sched.bpf.c and the Rust loader (probes/src/ebpf/maps.rs mirrors them). */
#ifndef VIGIL_SCHED_H
#define VIGIL_SCHED_H

/* Thread roles, told apart by thread name (see role_of in sched.bpf.c). */
#define ROLE_ENGINE 0  /* "vigil-engine": the scheduler/step loop */
#define ROLE_HTTP 1    /* "vigil-http":   tokio workers serving the API */
#define ROLE_COMPUTE 2 /* "vigil-compute": the CPU backend's worker pool */
#define ROLE_OTHER 3   /* anything else in the process */
#define NR_ROLES 4

/* Log2 slots of run-queue latency in microseconds: slot k holds waits with
 * floor(log2(us)) == k (0 and 1 us in slot 0), the last slot everything longer. */
#define NR_SLOTS 27

struct role_stats {
	__u64 slots[NR_SLOTS];
	__u64 runq_ns;       /* sum of run-queue waits */
	__u64 offcpu_ns;     /* time off CPU: from switch-out to the next switch-in */
	__u64 involuntary;   /* switch-outs while still runnable (preempted), counted at the next switch-in */
	__u64 voluntary;     /* switch-outs to sleep, counted at the next switch-in */
};

/* Per-CPU counters of the probe's own trouble. */
#define STAT_NO_STORAGE 0 /* task storage unavailable (recursion guard or out of memory) */
#define NR_STATS 1

#endif
