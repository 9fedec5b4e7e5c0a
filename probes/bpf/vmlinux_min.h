/* The few kernel types the probes read, declared for CO-RE.
 *
 * `preserve_access_index` makes clang record every field access as a relocation by name; the
 * loader (aya, with the running kernel's BTF) rewrites each to the kernel's real offset. So these
 * declarations need only the fields we use, in any order, and one object runs on any kernel
 * with BTF, without a 130,000-line vmlinux.h in the repository. */
#ifndef VIGIL_VMLINUX_MIN_H
#define VIGIL_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

enum {
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
};

struct task_struct {
	unsigned int __state;
	int pid;
	int tgid;
	char comm[16];
} __attribute__((preserve_access_index));

/* Kernels before 5.14 called `__state` `state` (and made it a long). */
struct task_struct___pre_5_14 {
	long state;
} __attribute__((preserve_access_index));

#endif
