//! The cuBLAS subset Vigil calls, as `libcublas.so`'s C functions: handles, their stream, and
//! `cublasGemmEx` for every operand layout (either transpose) and the types Vigil uses (bf16 or
//! f32 inputs, bf16 or f32 output, f32 compute), computed on the host in f32. Column-major, as
//! cuBLAS is. A combination not listed fails with its name on stderr and
//! CUBLAS_STATUS_NOT_SUPPORTED.

#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use std::ffi::{c_int, c_uint, c_void};

pub type Status = c_uint;
pub const CUBLAS_STATUS_SUCCESS: Status = 0;
pub const CUBLAS_STATUS_INVALID_VALUE: Status = 7;
pub const CUBLAS_STATUS_NOT_SUPPORTED: Status = 15;

const CUDA_R_32F: c_int = 0;
const CUDA_R_16BF: c_int = 14;
const CUBLAS_COMPUTE_32F: c_int = 68;
const CUBLAS_COMPUTE_32F_FAST_TF32: c_int = 77;
const CUBLAS_OP_N: c_int = 0;
const CUBLAS_OP_T: c_int = 1;

struct Handle {
    _stream: *mut c_void,
}

#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(handle: *mut *mut c_void) -> Status {
    *handle = Box::into_raw(Box::new(Handle {
        _stream: std::ptr::null_mut(),
    })) as *mut c_void;
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasDestroy_v2(handle: *mut c_void) -> Status {
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    drop(Box::from_raw(handle as *mut Handle));
    CUBLAS_STATUS_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetStream_v2(handle: *mut c_void, stream: *mut c_void) -> Status {
    if handle.is_null() {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    (*(handle as *mut Handle))._stream = stream;
    CUBLAS_STATUS_SUCCESS
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Round to nearest even, NaN kept (as the kernels' `f32_to_bf16`).
pub fn f32_to_bf16(f: f32) -> u16 {
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
    match ty {
        CUDA_R_16BF => out.extend(
            std::slice::from_raw_parts(ptr as *const u16, len)
                .iter()
                .map(|&b| bf16_to_f32(b)),
        ),
        _ => out.extend_from_slice(std::slice::from_raw_parts(ptr as *const f32, len)),
    }
}

thread_local! {
    /// Conversion buffers of A, B and C.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

/// The elements a column-major `rows x cols` operand with leading dimension `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        ld * (cols - 1) + rows
    }
}

#[no_mangle]
pub unsafe extern "C" fn cublasGemmEx(
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
    let (lda, ldb, ldc) = (lda as usize, ldb as usize, ldc as usize);
    // op(A) is m x k; stored k x m when transposed.
    let (a_rows, a_cols) = if trans_a == CUBLAS_OP_N {
        (m, k)
    } else {
        (k, m)
    };
    let (b_rows, b_cols) = if trans_b == CUBLAS_OP_N {
        (k, n)
    } else {
        (n, k)
    };
    if lda < a_rows.max(1) || ldb < b_rows.max(1) || ldc < m.max(1) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (what, ptr, ty, len) in [
        ("A", a as u64, a_type, span(a_rows, a_cols, lda)),
        ("B", b as u64, b_type, span(b_rows, b_cols, ldb)),
        ("C", c as u64, c_type, span(m, n, ldc)),
    ] {
        let bytes = len * if ty == CUDA_R_16BF { 2 } else { 4 };
        if bytes > 0 && !crate::memory::contains(ptr, bytes) {
            eprintln!(
                "cuda-sim: cublasGemmEx: {what} ([{ptr:#x}, +{bytes})) is not inside one device \
                 allocation"
            );
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    if m == 0 || n == 0 {
        return CUBLAS_STATUS_SUCCESS;
    }
    let (alpha, beta) = (*(alpha as *const f32), *(beta as *const f32));
    SCRATCH.with(|scratch| {
        let [a32, b32, c32] = &mut *scratch.borrow_mut();
        gemm_f32(
            (trans_a, trans_b),
            (m, n, k),
            (alpha, beta),
            (a, a_type, lda, a32),
            (b, b_type, ldb, b32),
            (c, c_type, ldc, c32),
        )
    });
    CUBLAS_STATUS_SUCCESS
}

/// The GEMM of [`cublasGemmEx`] once its arguments are checked: operands converted to f32
/// (into the scratch vectors), multiplied by the gemm crate, written back in C's type.
#[allow(clippy::type_complexity)]
unsafe fn gemm_f32(
    (trans_a, trans_b): (c_int, c_int),
    (m, n, k): (usize, usize, usize),
    (alpha, beta): (f32, f32),
    (a, a_type, lda, a32): (*const c_void, c_int, usize, &mut Vec<f32>),
    (b, b_type, ldb, b32): (*const c_void, c_int, usize, &mut Vec<f32>),
    (c, c_type, ldc, c32): (*mut c_void, c_int, usize, &mut Vec<f32>),
) {
    let (a_rows, a_cols) = if trans_a == CUBLAS_OP_N {
        (m, k)
    } else {
        (k, m)
    };
    let (b_rows, b_cols) = if trans_b == CUBLAS_OP_N {
        (k, n)
    } else {
        (n, k)
    };
    read_f32(a, a_type, span(a_rows, a_cols, lda), a32);
    read_f32(b, b_type, span(b_rows, b_cols, ldb), b32);
    // Strides of op(A) and op(B) as (row, column) in their stored buffers.
    let (a_rs, a_cs) = if trans_a == CUBLAS_OP_N {
        (1, lda)
    } else {
        (lda, 1)
    };
    let (b_rs, b_cs) = if trans_b == CUBLAS_OP_N {
        (1, ldb)
    } else {
        (ldb, 1)
    };
    let c_len = span(m, n, ldc);
    if beta != 0.0 {
        read_f32(c, c_type, c_len, c32);
    } else {
        c32.clear();
        c32.resize(c_len, 0.0);
    }
    if k == 0 {
        c32.iter_mut().for_each(|v| *v *= beta);
    } else {
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
            a_cs as isize,
            a_rs as isize,
            b32.as_ptr(),
            b_cs as isize,
            b_rs as isize,
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
        match c_type {
            CUDA_R_16BF => {
                let out = std::slice::from_raw_parts_mut((c as *mut u16).add(col * ldc), m);
                for (o, v) in out.iter_mut().zip(column) {
                    *o = f32_to_bf16(*v);
                }
            }
            _ => std::slice::from_raw_parts_mut((c as *mut f32).add(col * ldc), m)
                .copy_from_slice(column),
        }
    }
}
