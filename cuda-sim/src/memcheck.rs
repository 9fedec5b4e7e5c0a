//! Reports of kernels' bad memory accesses, as compute-sanitizer's memcheck gives them.
//!
//! Reporting bad memory accesses of kernels, as compute-sanitizer's memcheck does: a kernel
//! that touches a guard page ([`crate::memory`]) faults, and the fault handler names the
//! kernel, the block, the thread, read or write, and where the address lies relative to the
//! allocation. The faulting CUDA thread (a fiber) is then ended through its coroutine's trap
//! handler, and the launch fails with CUDA's illegal address (700), so that a caller such as
//! `vigil check-gpu` reports that check's failure and goes on. Unlike a GPU's, whose context is
//! lost after such an error, the simulated context stays usable: the guard caught the access
//! before it touched anything. Where the fiber cannot be ended so (not x86-64, or the fault is
//! not on a fiber's stack), the process ends with the report, exit status [`EXIT_STATUS`]. A
//! fault anywhere else is left to the previous handler.

use std::io::Write as _;
use std::sync::Once;

/// The exit status after a memcheck report.
pub(crate) const EXIT_STATUS: i32 = 86;

static INSTALL: Once = Once::new();

/// Installs the fault handler (once per process).
pub(crate) fn install() {
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
pub(crate) fn prepare_this_thread() {
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

/// Ends the running fiber where the fault interrupted it: its coroutine returns as if the
/// kernel had, and the block's scheduler, told so, fails the launch. Whether it could.
fn end_the_fiber(context: *mut libc::c_void) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some(trap) = crate::threads::take_trap_handler() else {
            return false;
        };
        // SAFETY: the kernel passes a ucontext_t to SA_SIGINFO handlers; the registers are
        // rewritten as corosensei's trap handler asks, so that on return from this handler the
        // fiber runs the trap function on its own (reset) stack and returns to its scheduler.
        // The kernel's writes before the fault stay as they were, as on a GPU.
        unsafe {
            let uc = &mut *(context as *mut libc::ucontext_t);
            let regs = &mut uc.uc_mcontext.gregs;
            if !trap.stack_ptr_in_bounds(regs[libc::REG_RSP as usize] as usize) {
                return false;
            }
            crate::threads::mark_faulted();
            let to = trap.setup_trap_handler(|| ());
            regs[libc::REG_RIP as usize] = to.rip as i64;
            regs[libc::REG_RSP as usize] = to.rsp as i64;
            regs[libc::REG_RBP as usize] = to.rbp as i64;
            regs[libc::REG_RDI as usize] = to.rdi as i64;
            regs[libc::REG_RSI as usize] = to.rsi as i64;
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = context;
        false
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
        // SAFETY: write(2) is async-signal-safe.
        unsafe { libc::write(2, buf.as_ptr() as *const _, len) };
        if end_the_fiber(context) {
            return;
        }
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(EXIT_STATUS) };
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
