//! The cuBLAS subset Vigil calls, as `libcublas.so`'s C functions.
//!
//! The cuBLAS subset Vigil calls, as `libcublas.so`'s C functions: handles, their stream, and
//! `cublasGemmEx` for every operand layout (either transpose) and the types Vigil uses (bf16 or
//! f32 inputs, bf16 or f32 output, f32 compute), computed on the host in f32. Column-major, as
//! cuBLAS is. A combination not listed fails with its name on stderr and
//! CUBLAS_STATUS_NOT_SUPPORTED.

#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use std::ffi::{c_int, c_uint, c_void};

pub(crate) type Status = c_uint;
pub(crate) const CUBLAS_STATUS_SUCCESS: Status = 0;
pub(crate) const CUBLAS_STATUS_INVALID_VALUE: Status = 7;
pub(crate) const CUBLAS_STATUS_NOT_SUPPORTED: Status = 15;

const CUDA_R_32F: c_int = 0;
const CUDA_R_16BF: c_int = 14;
const CUBLAS_COMPUTE_32F: c_int = 68;
const CUBLAS_COMPUTE_32F_FAST_TF32: c_int = 77;
const CUBLAS_OP_N: c_int = 0;
const CUBLAS_OP_T: c_int = 1;

struct Handle {
    stream: *mut c_void,
}

#[no_mangle]
pub(crate) unsafe extern "C" fn cublasCreate_v2(handle: *mut *mut c_void) -> Status {
    *handle = Box::into_raw(Box::new(Handle {
        stream: std::ptr::null_mut(),
    })) as *mut c_void;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub(crate) unsafe extern "C" fn cublasDestroy_v2(handle: *mut c_void) -> Status {
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    drop(Box::from_raw(handle as *mut Handle));
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub(crate) unsafe extern "C" fn cublasSetStream_v2(
    handle: *mut c_void,
    stream: *mut c_void,
) -> Status {
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    (*(handle as *mut Handle)).stream = stream;
    CUBLAS_STATUS_SUCCESS
}

#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Round to nearest even, NaN kept (as the kernels' `f32_to_bf16`).
pub(crate) fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `len` elements of type `ty` at `ptr`, as f32, into `out` (a buffer reused from call to
/// call: the weights of a whole model pass through here every step, and fresh vectors of that
/// size cost more in page faults than the conversion itself).
unsafe fn read_f32(ptr: *const c_void, ty: c_int, len: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(len, 0.0);
    widen(ptr, ty, out);
}

/// `out.len()` elements of type `ty` at `ptr`, as f32, into `out`.
unsafe fn widen(ptr: *const c_void, ty: c_int, out: &mut [f32]) {
    match ty {
        CUDA_R_16BF => {
            let from = std::slice::from_raw_parts(ptr as *const u16, out.len());
            for (to, v) in out.iter_mut().zip(from) {
                *to = bf16_to_f32(*v);
            }
        }
        _ => out.copy_from_slice(std::slice::from_raw_parts(ptr as *const f32, out.len())),
    }
}

thread_local! {
    /// Conversion buffers of A, B and C.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

/// One operand of a GEMM as cuBLAS describes it: where it is, its element type, its leading
/// dimension, and `op(X)`'s shape (`rows x cols`), stored transposed when `transposed`.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const c_void,
    ty: c_int,
    ld: usize,
    rows: usize,
    cols: usize,
    transposed: bool,
}

// SAFETY: an operand is an address and a shape; the GEMM's workers read through it into their
// own buffers and write disjoint elements of C.
unsafe impl Sync for Operand {}

impl Operand {
    fn new(ptr: *const c_void, ty: c_int, ld: c_int, op: c_int, rows: usize, cols: usize) -> Self {
        Operand {
            ptr,
            ty,
            ld: ld.max(0) as usize,
            rows,
            cols,
            transposed: op == CUBLAS_OP_T,
        }
    }

    /// The address of its stored element `index` (in elements of its type).
    fn element(&self, index: usize) -> *const c_void {
        (self.ptr as *const u8).wrapping_add(index * self.element_size()) as *const c_void
    }

    fn element_size(&self) -> usize {
        if self.ty == CUDA_R_16BF {
            2
        } else {
            4
        }
    }

    /// The column-major shape it is stored in.
    fn stored(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// The elements it spans in memory.
    fn span(&self) -> usize {
        let (rows, cols) = self.stored();
        if rows == 0 || cols == 0 {
            0
        } else {
            self.ld * (cols - 1) + rows
        }
    }

    fn bytes(&self) -> usize {
        self.span() * self.element_size()
    }

    /// (row stride, column stride) of `op(X)` in the stored elements.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.ld as isize, 1)
        } else {
            (1, self.ld as isize)
        }
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn cublasGemmEx(
    handle: *mut c_void,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    compute: c_int,
    _algo: c_int,
) -> Status {
    let supported_type = |t| t == CUDA_R_16BF || t == CUDA_R_32F;
    let supported_op = |o| o == CUBLAS_OP_N || o == CUBLAS_OP_T;
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if !(supported_type(a_type) && supported_type(b_type) && supported_type(c_type))
        || !(compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_FAST_TF32)
        || !(supported_op(trans_a) && supported_op(trans_b))
    {
        eprintln!(
            "cuda-sim: cublasGemmEx: types A {a_type} B {b_type} C {c_type}, compute {compute}, \
             ops {trans_a}/{trans_b} are not simulated (bf16/f32 data, f32 compute, N or T)"
        );
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if m < 0 || n < 0 || k < 0 {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    let (m, n, k) = (m as usize, n as usize, k as usize);
    // op(A) is m x k, op(B) k x n, C m x n.
    let a = Operand::new(a, a_type, lda, trans_a, m, k);
    let b = Operand::new(b, b_type, ldb, trans_b, k, n);
    let c = Operand::new(c, c_type, ldc, CUBLAS_OP_N, m, n);
    for (what, x) in [("A", a), ("B", b), ("C", c)] {
        if x.ld < x.stored().0.max(1) {
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        if x.bytes() > 0 && !crate::memory::contains(x.ptr as u64, x.bytes()) {
            eprintln!(
                "cuda-sim: cublasGemmEx: {what} ([{:#x}, +{})) is not inside one device \
                 allocation",
                x.ptr as u64,
                x.bytes()
            );
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    if m == 0 || n == 0 {
        return CUBLAS_STATUS_SUCCESS;
    }
    // Host-pointer scalars are read at the call, as cuBLAS reads them when it is captured too.
    let (alpha, beta) = (*(alpha as *const f32), *(beta as *const f32));
    let operands = Operands(a, b, c);
    let run = move || {
        let (a, b, c) = operands.parts();
        if crate::profile::enabled() {
            crate::profile::gemm(m, n, k, a.bytes() + b.bytes() + c.bytes());
        }
        // SAFETY: the operands were checked against their allocations at the call, which
        // outlive the graphs that replay it, as on a GPU.
        unsafe {
            if a.transposed && !b.transposed && a.ty == CUDA_R_16BF && beta == 0.0 && k > 0 {
                gemm_dot(k, alpha, a, b, c);
            } else {
                SCRATCH.with(|scratch| {
                    let [a32, b32, c32] = &mut *scratch.borrow_mut();
                    gemm_f32(k, (alpha, beta), (a, a32), (b, b32), (c, c32))
                });
            }
        }
        crate::driver::CUDA_SUCCESS
    };
    // On a capturing stream the GEMM is recorded, and runs when the graph does.
    let stream = (*(handle as *const Handle)).stream;
    if crate::graph::record(stream, Box::new(run)).is_none() {
        run();
    }
    CUBLAS_STATUS_SUCCESS
}

/// A GEMM's operands, sent to a graph that replays it.
#[derive(Clone, Copy)]
struct Operands(Operand, Operand, Operand);

impl Operands {
    /// The three (a method, so that a closure captures the whole, `Send` value).
    fn parts(self) -> (Operand, Operand, Operand) {
        (self.0, self.1, self.2)
    }
}
// SAFETY: device addresses, valid on any host thread.
unsafe impl Send for Operands {}
// SAFETY: as above; nothing is written through a shared reference.
unsafe impl Sync for Operands {}

/// `C = alpha op(A) op(B)` for a bf16 `A` stored with the rows of `op(A)` contiguous (a weight
/// matrix, `W` read as `Wᵀ`) and contiguous columns of `op(B)` (a step's tokens): the layout
/// the backend's projections use. Each element of C is one dot product over `k` in the same
/// order whatever the number of columns, so a token's result does not depend on the batch it
/// came in (a prompt computed whole and one computed after a cached prefix agree to the bit, as
/// the prefix cache's test expects). Rows of A are widened to f32 once per block of rows, not
/// the whole of A per call.
unsafe fn gemm_dot(k: usize, alpha: f32, a: Operand, b: Operand, c: Operand) {
    use rayon::prelude::*;
    let (m, n) = (c.rows, c.cols);
    let width = k.max(1);
    let mut columns = vec![0f32; n * k];
    for (j, column) in columns.chunks_exact_mut(width).enumerate().take(n) {
        widen(b.element(j * b.ld), b.ty, column);
    }
    // An address rather than the pointer: the workers write disjoint elements through it.
    let c_ptr = c.ptr as usize;
    const ROWS_PER_TASK: usize = 32;
    (0..m.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|task| {
            let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(m);
            let mut widened = vec![0f32; rows.len() * k];
            for (i, row) in rows.clone().zip(widened.chunks_exact_mut(width)) {
                // SAFETY: row i of op(A) is k contiguous elements inside A's allocation (checked
                // by the caller).
                widen(a.element(i * a.ld), a.ty, row);
            }
            for (j, column) in columns.chunks_exact(width).enumerate().take(n) {
                for (i, row) in rows.clone().zip(widened.chunks_exact(width)) {
                    let v = alpha * dot(row, column);
                    let at = i + j * c.ld;
                    // SAFETY: each element of C is written by exactly one task, inside C's
                    // allocation (checked by the caller).
                    match c.ty {
                        CUDA_R_16BF => *(c_ptr as *mut u16).add(at) = f32_to_bf16(v),
                        _ => *(c_ptr as *mut f32).add(at) = v,
                    }
                }
            }
        });
}

/// `Σ a[i]·b[i]` in f32, in eight partial sums (as a vector unit keeps them), fused where the
/// CPU has FMA.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes::<false>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<true>(a, b)
}

/// The dot product in `LANES` partial sums, each step fused (`FUSED`: where the CPU has FMA;
/// without it `mul_add` would call the C library's slow exact `fmaf`).
#[inline(always)]
fn dot_lanes<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let step = |x: f32, y: f32, acc: f32| {
        if FUSED {
            x.mul_add(y, acc)
        } else {
            acc + x * y
        }
    };
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] = step(x[l], y[l], acc[l]);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum = step(*x, *y, sum);
    }
    sum
}

/// The GEMM of [`cublasGemmEx`] once its arguments are checked: operands converted to f32
/// (into the scratch vectors), multiplied by the gemm crate, written back in C's type.
unsafe fn gemm_f32(
    k: usize,
    (alpha, beta): (f32, f32),
    (a, a32): (Operand, &mut Vec<f32>),
    (b, b32): (Operand, &mut Vec<f32>),
    (c, c32): (Operand, &mut Vec<f32>),
) {
    let (m, n, ldc) = (c.rows, c.cols, c.ld);
    read_f32(a.ptr, a.ty, a.span(), a32);
    read_f32(b.ptr, b.ty, b.span(), b32);
    if beta != 0.0 {
        read_f32(c.ptr, c.ty, c.span(), c32);
    } else {
        c32.clear();
        c32.resize(c.span(), 0.0);
    }
    if k == 0 {
        c32.iter_mut().for_each(|v| *v *= beta);
    } else {
        let ((a_rs, a_cs), (b_rs, b_cs)) = (a.strides(), b.strides());
        // gemm's convention: dst := alpha·dst + beta·lhs·rhs.
        gemm::gemm(
            m,
            n,
            k,
            c32.as_mut_ptr(),
            ldc as isize,
            1,
            beta != 0.0,
            a32.as_ptr(),
            a_cs,
            a_rs,
            b32.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    // Only the m x n elements are written back; the padding between columns is left alone.
    for col in 0..n {
        let column = &c32[col * ldc..col * ldc + m];
        match c.ty {
            CUDA_R_16BF => {
                let out = std::slice::from_raw_parts_mut((c.ptr as *mut u16).add(col * ldc), m);
                for (o, v) in out.iter_mut().zip(column) {
                    *o = f32_to_bf16(*v);
                }
            }
            _ => std::slice::from_raw_parts_mut((c.ptr as *mut f32).add(col * ldc), m)
                .copy_from_slice(column),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op(A)·op(B)` by its definition, in f64: the reference both paths are held to.
    fn reference(m: usize, n: usize, k: usize, a_t: &[f32], b: &[f32]) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for j in 0..n {
            for i in 0..m {
                c[i + j * m] = (0..k)
                    .map(|l| a_t[l + i * k] as f64 * b[l + j * k] as f64)
                    .sum();
            }
        }
        c
    }

    /// A weight read transposed times one to forty columns: the dot-product path and the
    /// blocked path both compute `Wᵀ·x` to f32 accuracy, into f32 and into bf16.
    #[test]
    fn both_gemm_paths_compute_the_product() {
        let (m, k) = (37, 203);
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let a_bits: Vec<u16> = (0..m * k).map(|_| f32_to_bf16(next())).collect();
        let a_t: Vec<f32> = a_bits.iter().map(|&b| bf16_to_f32(b)).collect();
        for n in [1, 3, 16, 40] {
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let want = reference(m, n, k, &a_t, &b);
            let a = Operand::new(
                a_bits.as_ptr() as _,
                CUDA_R_16BF,
                k as c_int,
                CUBLAS_OP_T,
                m,
                k,
            );
            let b_op = Operand::new(b.as_ptr() as _, CUDA_R_32F, k as c_int, CUBLAS_OP_N, k, n);
            for dot in [true, false] {
                for c_type in [CUDA_R_32F, CUDA_R_16BF] {
                    let mut out = vec![0u32; m * n];
                    let c = Operand::new(out.as_mut_ptr() as _, c_type, m as c_int, 0, m, n);
                    // SAFETY: host buffers of the operands' spans.
                    unsafe {
                        if dot {
                            gemm_dot(k, 1.0, a, b_op, c);
                        } else {
                            let mut s = [Vec::new(), Vec::new(), Vec::new()];
                            let [a32, b32, c32] = &mut s;
                            gemm_f32(k, (1.0, 0.0), (a, a32), (b_op, b32), (c, c32));
                        }
                    }
                    for (i, w) in want.iter().enumerate() {
                        let got = if c_type == CUDA_R_32F {
                            f32::from_bits(out[i])
                        } else {
                            bf16_to_f32(unsafe { *(out.as_ptr() as *const u16).add(i) })
                        };
                        let tolerance = if c_type == CUDA_R_32F { 1e-5 } else { 8e-3 };
                        assert!(
                            (got as f64 - w).abs() <= tolerance * (1.0 + w.abs()),
                            "n {n} dot {dot} type {c_type} at {i}: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
