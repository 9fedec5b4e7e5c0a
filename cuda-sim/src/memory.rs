//! Device memory: host memory in guarded mappings.
//!
//! Device memory: host memory in guarded mappings, so that kernels running on the host are
//! checked the way compute-sanitizer's memcheck checks them on a GPU.
//!
//! Each allocation gets its own mapping: an inaccessible page, the data pages, an inaccessible
//! page. The data ends where the last guard page begins (to 16 bytes), so any read or write past
//! the end faults at once and [`crate::memcheck`] reports the kernel, block, thread and offset.
//! The bytes between the front guard and the data, and the few after an unaligned end, hold a
//! canary pattern that is checked after every launch for the allocations the launch was given:
//! a write before the start is reported with the kernel and the offset. Fresh allocations are
//! filled with 0xff bytes (NaN as bf16 and f32), so a kernel that reads memory nothing wrote
//! produces NaNs instead of plausible zeros. A device address is the host address of the data.

use std::collections::BTreeMap;
use std::sync::Mutex;

const PAGE: usize = 4096;
/// Bytes before the data checked for writes (the rest up to the front guard is not).
const HEAD_CANARY: usize = 64;
const CANARY: u8 = 0xcd;
/// What fresh, uninitialised device memory holds.
const POISON: u8 = 0xff;

#[derive(Debug, Clone, Copy)]
struct Allocation {
    /// The mapping: front guard, data pages, back guard.
    map: usize,
    map_len: usize,
    size: usize,
}

impl Allocation {
    fn back_guard(&self) -> usize {
        self.map + self.map_len - PAGE
    }
}

/// Live allocations by data address.
static LIVE: Mutex<BTreeMap<usize, Allocation>> = Mutex::new(BTreeMap::new());

/// Bytes allocated now.
pub(crate) fn used() -> u64 {
    LIVE.lock().unwrap().values().map(|a| a.size as u64).sum()
}

/// A new allocation of `size` bytes, filled with the poison pattern; `None` when the device's
/// memory would be exceeded or the host refuses the mapping.
pub(crate) fn alloc(size: usize) -> Option<u64> {
    if used() + size as u64 > crate::device::total_memory() {
        return None;
    }
    let data_pages = (size + HEAD_CANARY + 15).div_ceil(PAGE).max(1);
    let map_len = (data_pages + 2) * PAGE;
    // SAFETY: a fresh anonymous mapping; the guard pages are made inaccessible below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    let map = map as usize;
    let allocation = Allocation { map, map_len, size };
    let back = allocation.back_guard();
    let data = (back - size) & !15;
    // SAFETY: the ranges are inside the mapping just made.
    unsafe {
        libc::mprotect(map as *mut _, PAGE, libc::PROT_NONE);
        libc::mprotect(back as *mut _, PAGE, libc::PROT_NONE);
        std::ptr::write_bytes((data - HEAD_CANARY) as *mut u8, CANARY, HEAD_CANARY);
        std::ptr::write_bytes(data as *mut u8, POISON, size);
        std::ptr::write_bytes((data + size) as *mut u8, CANARY, back - data - size);
    }
    LIVE.lock().unwrap().insert(data, allocation);
    Some(data as u64)
}

/// Frees the allocation at `addr`; false if no allocation starts there.
pub(crate) fn free(addr: u64) -> bool {
    let Some(a) = LIVE.lock().unwrap().remove(&(addr as usize)) else {
        return false;
    };
    // SAFETY: the mapping was made by `alloc` and nothing refers to it any more.
    unsafe { libc::munmap(a.map as *mut _, a.map_len) };
    true
}

/// Every live allocation as `[start, end)`, in address order (for the profiler, which looks
/// addresses up many times per launch without the lock).
pub(crate) fn ranges() -> Vec<(usize, usize)> {
    let live = LIVE.lock().unwrap();
    live.iter()
        .map(|(&data, a)| (data, data + a.size))
        .collect()
}

/// Whether `[addr, addr + len)` lies inside one live allocation.
pub(crate) fn contains(addr: u64, len: usize) -> bool {
    let live = LIVE.lock().unwrap();
    let addr = addr as usize;
    live.range(..=addr)
        .next_back()
        .is_some_and(|(&data, a)| addr + len <= data + a.size)
}

/// The allocation (data address and size) whose guard zone `addr` falls in, and where: bytes
/// past the end (positive) or before the start (negative). Called from the fault handler, so it
/// never waits for the lock.
pub(crate) fn guard_hit(addr: usize) -> Option<(usize, usize, isize)> {
    let live = LIVE.try_lock().ok()?;
    live.iter().find_map(|(&data, a)| {
        let end = data + a.size;
        if (end..a.back_guard() + PAGE).contains(&addr) {
            Some((data, a.size, (addr - end) as isize))
        } else if (a.map..data).contains(&addr) {
            Some((data, a.size, addr as isize - data as isize))
        } else {
            None
        }
    })
}

/// A write outside an allocation found by its canary bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CanaryDamage {
    pub data: usize,
    pub size: usize,
    /// Offset of the first damaged byte from the data's start (negative: before it).
    pub offset: isize,
}

/// Checks the canaries of the allocations that contain any of `addresses` (a launch's
/// parameters; values that are no device address are skipped).
pub(crate) fn check_canaries(addresses: impl IntoIterator<Item = u64>) -> Option<CanaryDamage> {
    let live = LIVE.lock().unwrap();
    for addr in addresses {
        let addr = addr as usize;
        let Some((&data, a)) = live.range(..=addr).next_back() else {
            continue;
        };
        if addr > data + a.size {
            continue;
        }
        // SAFETY: both ranges are inside the allocation's accessible pages.
        let (head, tail) = unsafe {
            (
                std::slice::from_raw_parts((data - HEAD_CANARY) as *const u8, HEAD_CANARY),
                std::slice::from_raw_parts(
                    (data + a.size) as *const u8,
                    a.back_guard() - data - a.size,
                ),
            )
        };
        if let Some(i) = head.iter().position(|&b| b != CANARY) {
            return Some(CanaryDamage {
                data,
                size: a.size,
                offset: i as isize - HEAD_CANARY as isize,
            });
        }
        if let Some(i) = tail.iter().position(|&b| b != CANARY) {
            return Some(CanaryDamage {
                data,
                size: a.size,
                offset: (a.size + i) as isize,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_end_at_their_guard_page_and_are_poisoned() {
        let a = alloc(100).unwrap();
        assert!(contains(a, 100));
        assert!(!contains(a, 101));
        assert!(!contains(a - 1, 1));
        // SAFETY: inside the allocation.
        let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, 100) };
        assert!(bytes.iter().all(|&b| b == POISON));
        let (data, size, offset) = guard_hit((a + 112) as usize).unwrap();
        assert_eq!((data, size), (a as usize, 100));
        assert_eq!(offset, 12);
        assert_eq!(check_canaries([a]), None);
        // SAFETY: a canary byte just before the data, inside the mapping.
        unsafe { *((a - 3) as *mut u8) = 0 };
        assert_eq!(
            check_canaries([a + 5]),
            Some(CanaryDamage {
                data: a as usize,
                size: 100,
                offset: -3
            })
        );
        assert!(free(a));
        assert!(!free(a));
    }
}
