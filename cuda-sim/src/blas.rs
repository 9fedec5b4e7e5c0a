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
        self.span() * if self.ty == CUDA_R_16BF { 2 } else { 4 }
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
    let (alpha, beta) = (*(alpha as *const f32), *(beta as *const f32));
    SCRATCH.with(|scratch| {
        let [a32, b32, c32] = &mut *scratch.borrow_mut();
        gemm_f32(k, (alpha, beta), (a, a32), (b, b32), (c, c32))
    });
    CUBLAS_STATUS_SUCCESS
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
