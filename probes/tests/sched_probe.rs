//! The eBPF probe loaded for real, checked against bpftrace on the same threads.
//!
//! The eBPF probe loaded for real (root, kernel BTF) against a workload with a known contention
//! pattern, beside Debian's bpftrace running runqlat's method on the same threads at the same
//! time.
//!
//! (libbpf-tools' `runqlat` is not the reference here: on this kernel it reports the preemption
//! waits of threads that share a process as twice as many waits of half the length, while
//! bpftrace and Vigil agree with each other and with the arithmetic: three spinners on one CPU
//! for 2 s wait 4 s in all.)

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use probes::SchedProbe;
use probes::{RoleStats, SchedSnapshot as Snapshot};

const ENGINE: usize = 0;
const COMPUTE: usize = 2;

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// What the measured thread does.
#[derive(Clone, Copy)]
enum Work {
    /// Sleep 1 ms, then work 50 µs: woken ~900 times a second.
    Sleeper,
    /// Spin without sleeping: runs until preempted.
    Spinner,
}

/// Runs a thread named `vigil-engine` pinned to CPU 0 doing `work` for `duration`, with `hogs`
/// busy threads (`vigil-compute-N`) pinned to the same CPU meanwhile. `ready` gets the engine
/// thread's tid before it starts; it starts when `go` is called.
fn workload(work: Work, hogs: usize, duration: Duration, ready: impl FnOnce(i32)) {
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(std::sync::Barrier::new(2));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let engine = std::thread::Builder::new()
        .name("vigil-engine".into())
        .spawn({
            let gate = Arc::clone(&gate);
            move || {
                pin_to(0);
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                gate.wait();
                let start = Instant::now();
                while start.elapsed() < duration {
                    match work {
                        Work::Sleeper => {
                            std::thread::sleep(Duration::from_millis(1));
                            let t = Instant::now();
                            while t.elapsed() < Duration::from_micros(50) {
                                std::hint::spin_loop();
                            }
                        }
                        Work::Spinner => std::hint::spin_loop(),
                    }
                }
            }
        })
        .unwrap();
    let hog_threads: Vec<_> = (0..hogs)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("vigil-compute-{i}"))
                .spawn(move || {
                    pin_to(0);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .unwrap()
        })
        .collect();
    ready(tid_rx.recv().unwrap());
    gate.wait();
    engine.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in hog_threads {
        h.join().unwrap();
    }
}

/// The probes' tests measure the same tracepoints: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn delta(after: &RoleStats, before: &RoleStats) -> RoleStats {
    let mut d = *after;
    for (a, b) in d.slots.iter_mut().zip(before.slots) {
        *a -= b;
    }
    d.runq_ns -= before.runq_ns;
    d.offcpu_ns -= before.offcpu_ns;
    d.involuntary -= before.involuntary;
    d.voluntary -= before.voluntary;
    d
}

/// The log2 slot holding the median of a histogram of slot counts.
fn median_slot(slots: &[u64]) -> usize {
    let total: u64 = slots.iter().sum();
    let mut seen = 0;
    for (i, n) in slots.iter().enumerate() {
        seen += n;
        if seen * 2 >= total {
            return i;
        }
    }
    slots.len() - 1
}

fn attach() -> SchedProbe {
    SchedProbe::attach(std::process::id()).unwrap_or_else(|state| {
        panic!("the eBPF probe must load here (root, kernel BTF, clang at build): {state:?}")
    })
}

#[test]
fn contention_shows_in_the_engine_role_and_agrees_with_bpftrace() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let probe = attach();

    // Alone on its CPU, a sleeping thread is woken within microseconds.
    let before = probe.read().unwrap();
    workload(Work::Sleeper, 0, Duration::from_millis(500), |_| ());
    let quiet = delta(&probe.read().unwrap().roles[ENGINE], &before.roles[ENGINE]);

    // A busy thread sharing its CPU with two other busy threads waits, each time it is
    // preempted, while the two others run their slices. Debian's bpftrace measures the same
    // threads (this process's, by thread id: another Vigil on the machine has threads of the
    // same names) at the same time, with runqlat's method.
    let mut tracer = None;
    let mut before = Snapshot::default();
    workload(Work::Spinner, 2, Duration::from_millis(2000), |_| {
        tracer = Some(start_bpftrace(&own_thread_ids()));
        before = probe.read().unwrap();
    });
    let after = probe.read().unwrap();
    let busy = delta(&after.roles[ENGINE], &before.roles[ENGINE]);
    let hogs = delta(&after.roles[COMPUTE], &before.roles[COMPUTE]);
    let (mut child, mut out) = tracer.unwrap();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    child.wait().unwrap();
    eprintln!("alone, sleeping: engine slots {:?}", quiet.slots);
    eprintln!("contended, spinning: engine {busy:?}");
    eprintln!("contended, spinning: compute {hogs:?}");
    let theirs = bpftrace_slots(&text);
    let mut ours = RoleStats::default();
    for (a, b) in after.roles.iter().zip(&before.roles) {
        ours.add(&delta(a, b));
    }
    eprintln!("vigil, whole process: {:?}", ours.slots);
    eprintln!("bpftrace, same threads: {theirs:?}");
    assert!(quiet.waits() >= 200, "{quiet:?}");
    assert!(quiet.voluntary >= 200, "{quiet:?}");
    let (q, b) = (median_slot(&quiet.slots), median_slot(&busy.slots));
    let (o, t) = (median_slot(&ours.slots), median_slot(&theirs));
    // Woken within 64 us when alone.
    assert!(q <= 6, "alone: median slot {q}");
    // Preempted, it waits for two slices of the others: milliseconds (slot 10 is 1-2 ms).
    assert!(busy.involuntary >= 20, "{busy:?}");
    assert!(
        (10..=14).contains(&b),
        "contended median slot {b}: {busy:?}"
    );
    // The busy neighbours are preempted too, and counted under their own role.
    assert!(hogs.involuntary >= 20, "{hogs:?}");
    // And bpftrace saw the same within one log2 bucket.
    assert!(o.abs_diff(t) <= 1, "median slot: vigil {o}, bpftrace {t}");
}

/// runqlat's method in bpftrace, for the threads `TIDS` (a condition on `args->next_pid`): a
/// wakeup, or a switch-out while runnable (state 0, or 0x100 when preempted as the tracepoint
/// reports it), starts the clock; the next switch-in stops it. Prints a log2 histogram of
/// microseconds after 4 s.
const RUNQLAT_BT: &str = r#"
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @start[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0 || args->prev_state == 0x100) { @start[args->prev_pid] = nsecs; }
  $t = @start[args->next_pid];
  if ($t && (TIDS)) { @usecs = hist((nsecs - $t) / 1000); }
  delete(@start[args->next_pid]);
}
interval:s:4 { exit(); }
"#;

/// The ids of this process's threads now.
fn own_thread_ids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Starts bpftrace on the threads `tids` (tracefs mounted if it is not: its tracepoints need
/// it) and waits until its probes are attached.
fn start_bpftrace(tids: &[i32]) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    assert!(!tids.is_empty());
    let filter: Vec<String> = tids
        .iter()
        .map(|t| format!("args->next_pid == {t}"))
        .collect();
    let script = RUNQLAT_BT.replace("TIDS", &filter.join(" || "));
    if !std::path::Path::new("/sys/kernel/tracing/events/sched").exists() {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .unwrap();
        assert!(ok.success(), "cannot mount tracefs for bpftrace");
    }
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace (Debian package bpftrace) must be installed");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap(); // "Attaching 4 probes..."
    assert!(line.contains("Attaching"), "bpftrace: {line}");
    (child, out)
}

/// The slot counts of the log2 histogram bpftrace printed (`[4K, 8K)   244 |@@@@|`).
fn bpftrace_slots(text: &str) -> Vec<u64> {
    let mut slots = vec![0u64; 27];
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('[') else {
            continue;
        };
        let Some((low, rest)) = rest.split_once(',') else {
            continue;
        };
        let Some((_, rest)) = rest.split_once(')') else {
            continue;
        };
        let low = match low.trim() {
            l if l.ends_with('K') => l[..l.len() - 1].parse::<u64>().unwrap() << 10,
            l if l.ends_with('M') => l[..l.len() - 1].parse::<u64>().unwrap() << 20,
            l => l.parse::<u64>().unwrap(),
        };
        let count: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
        let slot = if low == 0 { 0 } else { low.ilog2() as usize };
        slots[slot.min(26)] += count;
    }
    assert!(slots.iter().sum::<u64>() > 0, "no histogram in:\n{text}");
    slots
}

#[test]
fn the_probe_exports_its_histograms_through_the_exporter() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let probe = attach();
    workload(Work::Sleeper, 0, Duration::from_millis(100), |_| ());
    let snap: Snapshot = probe.read().unwrap();
    let exporter = exporter::Exporter::new(exporter::ExporterConfig::new(2048));
    probes::export_sched_snapshot(&exporter, &snap).unwrap();
    let text = exporter::render(&exporter, exporter::Format::Prometheus);
    let count_line = text
        .lines()
        .find(|l| l.starts_with("vigil_runqueue_latency_seconds_count{role=\"engine\"}"))
        .expect("engine histogram rendered");
    let count: f64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(count as u64, snap.roles[ENGINE].waits());
    assert!(count >= 50.0, "{count_line}");
    assert!(
        text.contains("vigil_runqueue_latency_seconds_bucket{le=\"2e-06\",role=\"engine\"}"),
        "{text}"
    );
    assert!(text.contains("vigil_off_cpu_seconds_total{role=\"engine\"}"));
}

/// The object committed next to the C (embedded when a machine builds without clang) was
/// compiled from the committed sources and flags: change the C without `cargo xtask
/// bpf-object` and this fails.
#[test]
fn the_committed_objects_are_compiled_from_the_committed_sources() {
    let recorded = include_str!("../bpf/sched.bpf.o.sha256").trim();
    assert_eq!(
        recorded,
        env!("VIGIL_SCHED_BPF_SOURCES_HASH"),
        "probes/bpf/sched.bpf.*.o are stale: run `cargo xtask bpf-object` and commit them"
    );
}

/// The committed object for this machine loads, attaches and counts like the one clang built.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_committed_object_loads_and_counts() {
    static COMMITTED: &[u8] = aya::include_bytes_aligned!("../bpf/sched.bpf.x86.o");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let probe = SchedProbe::attach_object(COMMITTED, std::process::id())
        .unwrap_or_else(|state| panic!("the committed object must load here: {state:?}"));
    workload(Work::Sleeper, 0, Duration::from_millis(100), |_| ());
    let snap: Snapshot = probe.read().unwrap();
    assert!(snap.roles[ENGINE].waits() >= 50, "{:?}", snap.roles[ENGINE]);
}
