//! Linear layers `y = x W^T` with `W` of shape `[out, in]`.

/// How the CPU backend keeps weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32, multiplied with the `gemm` crate: exact, 4 bytes per weight.
    F32,
}

pub struct Linear {
    out: usize,
    inp: usize,
    w: Vec<f32>,
}

impl Linear {
    pub fn new(w: Vec<f32>, out: usize, inp: usize, _format: WeightFormat) -> Linear {
        assert_eq!(w.len(), out * inp, "linear weight size");
        Linear { out, inp, w }
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    /// `y[t, out] = x[t, in] · W^T`.
    pub fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.inp);
        assert_eq!(y.len(), t * self.out);
        // SAFETY: the slices hold exactly the elements the strides address (checked above).
        unsafe {
            gemm::gemm(
                t,
                self.out,
                self.inp,
                y.as_mut_ptr(),
                1,
                self.out as isize,
                false,
                x.as_ptr(),
                1,
                self.inp as isize,
                self.w.as_ptr(),
                self.inp as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
}
