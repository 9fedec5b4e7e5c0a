//! Reporting bad memory accesses of kernels, as compute-sanitizer's memcheck does: a kernel
//! that touches a guard page ([`crate::memory`]) faults, and the fault handler names the
//! kernel, the block, the thread, read or write, and where the address lies relative to the
//! allocation. On a GPU such an access is a sticky error that ends the context (every later
//! call fails); here the process ends with the report, exit status [`EXIT_STATUS`]. A fault
//! anywhere else is left to the previous handler.

use std::io::Write as _;
use std::sync::Once;

/// The exit status after a memcheck report.
pub const EXIT_STATUS: i32 = 86;

static INSTALL: Once = Once::new();

/// Installs the fault handler (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: installs a handler for SIGSEGV and SIGBUS, which only reads (try_lock) and
        // writes to stderr before ending the process, or restores the default and returns.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

thread_local! {
    static ALT_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives this OS thread an alternate signal stack, so the handler runs even when the fault is a
/// fiber's stack overflowing.
pub fn prepare_this_thread() {
    ALT_STACK.with(|done| {
        if done.replace(true) {
            return;
        }
        const SIZE: usize = 64 * 1024;
        let stack = Box::leak(vec![0u8; SIZE].into_boxed_slice());
        let ss = libc::stack_t {
            ss_sp: stack.as_mut_ptr() as *mut _,
            ss_flags: 0,
            ss_size: SIZE,
        };
        // SAFETY: the stack is leaked, so it lives as long as the thread.
        unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
    });
}

/// Whether the faulting access was a write (x86-64's page-fault error code, bit 1).
fn was_write(context: *mut libc::c_void) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel passes a ucontext_t to SA_SIGINFO handlers.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        Some(uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = context;
        None
    }
}

extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t.
    let addr = unsafe { (*info).si_addr() } as usize;
    let hit = crate::memory::guard_hit(addr);
    let running = crate::threads::running();
    if let (Some((data, size, offset)), Some(r)) = (hit, running) {
        let mut buf = [0u8; 512];
        let mut w = &mut buf[..];
        let access = match was_write(context) {
            Some(true) => "write",
            Some(false) => "read",
            None => "access",
        };
        let (distance, side) = if offset >= 0 {
            (offset.unsigned_abs(), "past the end")
        } else {
            (offset.unsigned_abs(), "before the start")
        };
        let _ = writeln!(
            w,
            "cuda-sim memcheck: invalid {access} of device memory in kernel `{}`, block {:?}, \
             thread {:?}: address {addr:#x} is {distance} bytes {side} of a {size}-byte allocation at {data:#x}",
            r.kernel, r.block, r.thread
        );
        let len = 512 - w.len();
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, buf.as_ptr() as *const _, len);
            libc::_exit(EXIT_STATUS);
        }
    }
    if let Some(r) = running {
        let mut buf = [0u8; 256];
        let mut w = &mut buf[..];
        let _ = writeln!(
            w,
            "cuda-sim: fault at {addr:#x} in kernel `{}`, block {:?}, thread {:?} (outside any \
             device allocation's guard: a wild pointer, or a CUDA thread's stack overflowed)",
            r.kernel, r.block, r.thread
        );
        let len = 256 - w.len();
        // SAFETY: as above.
        unsafe { libc::write(2, buf.as_ptr() as *const _, len) };
    }
    // Not ours to report: the default action, when the access is retried on return.
    // SAFETY: restoring the default disposition.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}
