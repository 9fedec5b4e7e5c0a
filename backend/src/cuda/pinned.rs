//! Page-locked host buffers, for the step's one upload and its downloads.
//!
//! A copy from or to pageable memory is staged by the driver and synchronous (cudarc waits for
//! the stream after each); from page-locked memory it is a DMA the stream orders like a kernel.
//! The step writes its plan into [`PinnedBuf`]s, enqueues the upload, the forward pass and the
//! downloads, and synchronises once, after which the host reads the results. cudarc's
//! `PinnedHostSlice` synchronises an event on every host access, so these are plain
//! allocations whose ordering the step keeps itself: the host touches a buffer only while the
//! stream is idle (before the step's upload is enqueued, after its synchronisation).

use std::ffi::c_void;

use cudarc::driver::{result, CudaStream, DevicePtr, DeviceRepr};

use super::error::CudaError;

/// `len` values of `T` in page-locked host memory.
pub(crate) struct PinnedBuf<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: plain host memory owned by this value; the step orders its use with the stream.
unsafe impl<T: Send> Send for PinnedBuf<T> {}

impl<T: DeviceRepr + Copy> PinnedBuf<T> {
    /// Allocates room for `len` values (at least one), with the context bound to this thread.
    pub(crate) fn new(len: usize) -> Result<PinnedBuf<T>, CudaError> {
        let len = len.max(1);
        // SAFETY: a fresh allocation of `len` values, freed in Drop.
        let ptr = unsafe { result::malloc_host(len * std::mem::size_of::<T>(), 0) }? as *mut T;
        Ok(PinnedBuf { ptr, len })
    }

    /// Copies `values` in, for an upload enqueued after (the stream is idle).
    pub(crate) fn write(&mut self, values: &[T]) {
        assert!(values.len() <= self.len);
        // SAFETY: in bounds; no copy of the stream reads this memory while it is idle.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr, values.len()) };
    }

    /// The first `n` values, once the stream synchronised after the download into them.
    pub(crate) fn read(&self, n: usize) -> &[T] {
        assert!(n <= self.len);
        // SAFETY: in bounds, initialised by the download the caller waited for.
        unsafe { std::slice::from_raw_parts(self.ptr, n) }
    }

    /// Enqueues the copy of the first `n` values to `dst` on `stream`.
    pub(crate) fn upload(
        &self,
        stream: &CudaStream,
        dst: &impl DevicePtr<T>,
        n: usize,
    ) -> Result<(), CudaError> {
        assert!(n <= self.len && n <= dst.len());
        let (dst, _record) = dst.device_ptr(stream);
        // SAFETY: both ranges hold `n` values; the host leaves this memory alone until the
        // stream synchronises.
        unsafe { result::memcpy_htod_async(dst, self.read(n), stream.cu_stream()) }?;
        Ok(())
    }

    /// Enqueues the copy of `n` values from `src` into the first `n` of this buffer.
    pub(crate) fn download(
        &mut self,
        stream: &CudaStream,
        src: &impl DevicePtr<T>,
        n: usize,
    ) -> Result<(), CudaError> {
        assert!(n <= self.len && n <= src.len());
        let (src, _record) = src.device_ptr(stream);
        // SAFETY: as in `upload`; the host reads the values after the stream synchronised.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr, n) };
        unsafe { result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }?;
        Ok(())
    }
}

impl<T> Drop for PinnedBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host`, freed once; the stream is idle by then (the
        // backend synchronises at the end of every step).
        let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
    }
}
