//! The CUDA kernels and their compilation by NVRTC at start-up, for the device's architecture.
//!
//! Sources carry no `#include` (NVRTC finds no system headers without a CUDA toolkit): the
//! shared helpers of `kernels/common.cuh` are prepended to every file instead.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::shape::LayerShape;

/// Helpers every kernel file uses (bf16 conversions, warp and block reductions).
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One kernel family: its file and the entry points it defines.
pub struct KernelFile {
    /// The file's name, for NVRTC's messages.
    pub name: &'static str,
    /// The CUDA C source.
    pub source: &'static str,
    /// The kernels it defines.
    pub entries: &'static [Entry],
}

/// An entry point, the threads per block every launch of it uses (the one place that says so:
/// launches read it from here, and a test checks with ptxas that it fits the registers), and
/// its parameters as its Rust argument struct declares them (name, type), which a test compares
/// with the kernel's C signature.
pub struct Entry {
    /// The `extern "C"` name.
    pub name: &'static str,
    /// Threads per block it is launched with.
    pub threads: u32,
    /// Its C parameters as (type, name), checked against the source.
    pub params: &'static [(&'static str, &'static str)],
}

/// bf16 values, carried as their 16 bits (the kernels' `bf16`).
pub type Bf16 = u16;

/// A kernel's pointer parameter (`T*` or `const T*`): a device address of `T` elements.
#[derive(Debug)]
pub struct DevPtr<T> {
    addr: u64,
    element: std::marker::PhantomData<T>,
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevPtr<T> {}

impl<T> DevPtr<T> {
    /// A typed pointer to device memory at `addr`.
    pub fn new(addr: u64) -> DevPtr<T> {
        DevPtr {
            addr,
            element: std::marker::PhantomData,
        }
    }

    /// The null pointer (an absent optional buffer, e.g. `rms_norm`'s residual).
    pub fn null() -> DevPtr<T> {
        DevPtr::new(0)
    }

    /// The device address.
    pub fn addr(self) -> u64 {
        self.addr
    }

    /// The same bytes read as `U` of the same size: where a buffer's words are another type
    /// to the kernel (the step plan's u32 words hold the kernels' `int` slots and tables).
    pub fn cast<U>(self) -> DevPtr<U> {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<U>());
        DevPtr::new(self.addr)
    }
}

/// How many blocks a launch runs.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    /// `x` by `y` blocks.
    Blocks(u32, u32),
    /// `x` by `y` by `z` blocks.
    Blocks3(u32, u32, u32),
    /// One thread per element of `n`, in as many blocks as that takes (at least one).
    Elements(usize),
}

/// One kernel argument, as the kernel's C signature declares it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A pointer (`T*`): a device address.
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `size_t`.
    Size(u64),
    /// `float`.
    F32(f32),
}

/// An argument struct's field as the argument cuLaunchKernel takes.
pub trait IntoArg {
    /// The value as a launch argument.
    fn into_arg(self) -> Arg;
}

impl<T> IntoArg for DevPtr<T> {
    fn into_arg(self) -> Arg {
        Arg::Ptr(self.addr())
    }
}

impl IntoArg for i32 {
    fn into_arg(self) -> Arg {
        Arg::I32(self)
    }
}

impl IntoArg for u64 {
    fn into_arg(self) -> Arg {
        Arg::Size(self)
    }
}

impl IntoArg for f32 {
    fn into_arg(self) -> Arg {
        Arg::F32(self)
    }
}

/// Dimensions a kernel takes as a C `int`, each its own type so that one cannot be passed
/// where another is meant (a swapped `n_heads` and `n_kv_heads` does not compile); each is
/// built from the [`LayerShape`] field of the same name.
macro_rules! int_dimensions {
    ($($(#[doc = $doc:literal])* $name:ident($field:ident)),* $(,)?) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $name(pub i32);

            impl $name {
                /// The dimension of `shape`.
                pub fn of(shape: &LayerShape) -> $name {
                    $name(shape.$field as i32)
                }
            }

            impl IntoArg for $name {
                fn into_arg(self) -> Arg {
                    Arg::I32(self.0)
                }
            }
        )*

        /// The Rust types of the table that stand for a C `int` besides `i32`.
        pub const INT_NEWTYPES: &[&str] = &[$(stringify!($name)),*];
    };
}

int_dimensions! {
    /// A count of query heads (a kernel's `int n_heads`).
    Heads(n_heads),
    /// A count of key/value heads (a kernel's `int n_kv_heads`).
    KvHeads(n_kv_heads),
    /// The width of one attention head (a kernel's `int head_dim`).
    HeadDim(head_dim),
}

/// The argument struct of one entry point: which kernel it launches, and its fields as the
/// kernel's arguments, in the C signature's order.
pub trait KernelArgs: Copy {
    /// The entry point's name.
    const ENTRY: &'static str;
    /// Calls `f` with the arguments.
    fn with_args<R>(self, f: impl FnOnce(&[Arg]) -> R) -> R;
}

/// The kernel table: each file with its entry points, each entry point's threads per block and
/// its parameters, in the order and with the types of its C signature. From it come [`FILES`]
/// and one argument struct per entry point (named fields, so a call site says which value is
/// which), launched by [`super::launch::Kernels::run`];
/// `the_argument_structs_mirror_the_c_signatures` checks the table against the `.cu` sources.
macro_rules! kernel_table {
    ($($file:literal => [$(
        $(#[doc = $doc:literal])*
        $name:ident($args:ident { $($param:ident: $ty:ty),* $(,)? }) threads $threads:literal;
    )*])*) => {
        /// Every kernel file of the backend.
        pub const FILES: &[KernelFile] = &[$(KernelFile {
            name: $file,
            source: include_str!(concat!("kernels/", $file)),
            entries: &[$(Entry {
                name: stringify!($name),
                threads: $threads,
                params: &[$((stringify!($param), stringify!($ty))),*],
            }),*],
        }),*];

        $($(
            #[doc = concat!("The arguments of `", stringify!($name), "`, as its C signature names them.")]
            $(#[doc = ""] #[doc = $doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $args {
                $(#[allow(missing_docs)] pub $param: $ty),*
            }

            impl KernelArgs for $args {
                const ENTRY: &'static str = stringify!($name);

                fn with_args<R>(self, f: impl FnOnce(&[Arg]) -> R) -> R {
                    let $args { $($param),* } = self;
                    f(&[$($param.into_arg()),*])
                }
            }
        )*)*
    };
}

kernel_table! {
    "embedding.cu" => [
        /// `out[t, :] = table[ids[t], :]`, one block per token.
        embedding_gather(EmbeddingGather {
            table: DevPtr<Bf16>, ids: DevPtr<u32>, out: DevPtr<Bf16>, hidden: i32,
        }) threads 256;
    ]
    "norm.cu" => [
        /// RMSNorm per token (one block each, 16-byte words: hidden a multiple of 8 up to 8192);
        /// with `residual` non-null, `residual += x` first.
        rms_norm(RmsNorm {
            x: DevPtr<Bf16>, residual: DevPtr<Bf16>, w: DevPtr<Bf16>, out: DevPtr<Bf16>,
            hidden: i32, eps: f32,
        }) threads 256;
        /// `x += y`, one thread per element.
        add_inplace(AddInplace { x: DevPtr<Bf16>, y: DevPtr<Bf16>, n: u64 }) threads 256;
    ]
    "rope.cu" => [
        /// Rotary embedding of q in place and of k into the KV cache at its slot, with v beside
        /// it (a negative slot skips the cache), grid (tokens, [`super::rope::ctas_per_token`]).
        rope_kv_write(RopeKvWrite {
            q: DevPtr<Bf16>, k: DevPtr<Bf16>, v: DevPtr<Bf16>, k_cache: DevPtr<Bf16>,
            v_cache: DevPtr<Bf16>, positions: DevPtr<u32>, slots: DevPtr<i32>,
            cos_table: DevPtr<f32>, sin_table: DevPtr<f32>, n_heads: Heads, n_kv_heads: KvHeads,
            head_dim: HeadDim, stride: i32,
        }) threads 128;
    ]
    "activation.cu" => [
        /// SwiGLU, one thread per output element.
        silu_and_mul(SiluAndMul {
            gate_up: DevPtr<Bf16>, out: DevPtr<Bf16>, inter: i32, tokens: u64,
        }) threads 256;
    ]
    "attention.cu" => [
        /// Paged attention, grid (query tokens, KV heads x head chunks, splits), the last CTA
        /// of a split group merging; launched by `super::attention`.
        paged_attention(PagedAttention {
            out: DevPtr<Bf16>, part_acc: DevPtr<f32>, part_ml: DevPtr<f32>,
            split_counts: DevPtr<i32>, q: DevPtr<Bf16>, k_cache: DevPtr<Bf16>,
            v_cache: DevPtr<Bf16>, block_tables: DevPtr<i32>, max_blocks_per_seq: i32,
            token_seq: DevPtr<i32>, token_pos: DevPtr<i32>, n_heads: Heads, n_kv_heads: KvHeads,
            head_dim: HeadDim, block_size: i32, scale: f32, q_stride: i32, partition: i32,
            splits: i32,
        }) threads 128;
    ]
    "sampling.cu" => [
        /// Each row's argmax and its log-probability, one block per row.
        argmax_rows(ArgmaxRows {
            logits: DevPtr<f32>, vocab: i32, ids: DevPtr<u32>, logprobs: DevPtr<f32>,
        }) threads 1024;
    ]
    "gemv.cu" => [
        /// `y = x Wᵀ` for up to 8 tokens over Q4_0 planes (`super::quantized`), grid: rows / (4
        /// x 128 / lanes); `gated` non-zero: x is gate/up, taken as silu(gate) * up.
        gemv_q4_0(GemvQ4_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q4_0` for a step of one token (fewer registers).
        gemv_one_q4_0(GemvOneQ4_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q4_0`, over Q4_1 planes.
        gemv_q4_1(GemvQ4_1 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q4_1` for a step of one token (fewer registers).
        gemv_one_q4_1(GemvOneQ4_1 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q4_0`, over Q8_0 planes.
        gemv_q8_0(GemvQ8_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q8_0` for a step of one token (fewer registers).
        gemv_one_q8_0(GemvOneQ8_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q4_0`, over Q6_K's planes (signed bytes, a scale per 16 values).
        gemv_q6_k(GemvQ6K {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// As `gemv_q6_k` for a step of one token (fewer registers).
        gemv_one_q6_k(GemvOneQ6K {
            qs: DevPtr<u8>, scales: DevPtr<u16>, x: DevPtr<Bf16>, y: DevPtr<Bf16>,
            y_f32: DevPtr<f32>, rows: i32, k_blocks: i32, tokens: i32, lanes: i32, gated: i32,
        }) threads 128;
        /// Q4_0 planes' blocks `first..first + n_blocks` to bf16, eight blocks a thread.
        decode_planes_q4_0(DecodePlanesQ4_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, out: DevPtr<Bf16>, first: u64, n_blocks: u64,
        }) threads 256;
        /// As `decode_planes_q4_0`, over Q4_1 planes.
        decode_planes_q4_1(DecodePlanesQ4_1 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, out: DevPtr<Bf16>, first: u64, n_blocks: u64,
        }) threads 256;
        /// As `decode_planes_q4_0`, over Q8_0 planes.
        decode_planes_q8_0(DecodePlanesQ8_0 {
            qs: DevPtr<u8>, scales: DevPtr<u16>, out: DevPtr<Bf16>, first: u64, n_blocks: u64,
        }) threads 256;
        /// As `decode_planes_q4_0`, over Q6_K's planes.
        decode_planes_q6_k(DecodePlanesQ6K {
            qs: DevPtr<u8>, scales: DevPtr<u16>, out: DevPtr<Bf16>, first: u64, n_blocks: u64,
        }) threads 256;
    ]
    "dequant.cu" => [
        /// GGUF Q8_0 blocks to bf16, one thread per 32-value block.
        dequant_q8_0(DequantQ8_0 { blocks: DevPtr<u8>, out: DevPtr<Bf16>, n_blocks: u64 })
            threads 256;
        /// GGUF Q4_0 blocks to bf16, one thread per block.
        dequant_q4_0(DequantQ4_0 { blocks: DevPtr<u8>, out: DevPtr<Bf16>, n_blocks: u64 })
            threads 256;
        /// GGUF Q4_1 blocks to bf16, one thread per block.
        dequant_q4_1(DequantQ4_1 { blocks: DevPtr<u8>, out: DevPtr<Bf16>, n_blocks: u64 })
            threads 256;
        /// IEEE half to bf16, one thread per element.
        convert_f16(ConvertF16 { r#in: DevPtr<u16>, out: DevPtr<Bf16>, n: u64 }) threads 256;
        /// f32 to bf16, one thread per element.
        convert_f32(ConvertF32 { r#in: DevPtr<f32>, out: DevPtr<Bf16>, n: u64 }) threads 256;
    ]
}

/// Whether libnvrtc can be loaded here.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC options besides the architecture.
pub const OPTIONS: &[&str] = &["-std=c++17"];

/// The global each module's PTX carries its source's digest in: the SHA-256 (hex) of
/// `common.cuh`, a newline and the file, as NVRTC compiles them. The simulated GPU compares it
/// with the digest of the source it compiled the same kernels from for the host.
pub const SOURCE_DIGEST: &str = "vigil_source_digest";

/// Compiles `file` to PTX for `arch` (e.g. `sm_90`, from the device's compute capability).
/// Panics inside cudarc when libnvrtc is missing: check [`nvrtc_available`] first.
pub fn compile(file: &KernelFile, arch: &str) -> Result<Ptx, CompileError> {
    use sha2::Digest;
    let mut options = vec![format!("--gpu-architecture={arch}")];
    options.extend(OPTIONS.iter().map(|o| o.to_string()));
    let source = format!("{COMMON}\n{}", file.source);
    let digest: String = sha2::Sha256::digest(source.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    compile_ptx_with_opts(
        format!("{source}\nextern \"C\" __device__ const char {SOURCE_DIGEST}[] = \"{digest}\";\n"),
        CompileOptions {
            options,
            name: Some(file.name.to_owned()),
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI has no GPU but loads the real NVRTC (`cargo xtask test` fetches libnvrtc from PyPI's
    /// nvidia-cuda-nvrtc-cu12 and puts it on LD_LIBRARY_PATH).
    #[test]
    fn every_kernel_compiles_with_nvrtc_for_ampere_and_hopper() {
        assert!(
            nvrtc_available(),
            "libnvrtc cannot be loaded: run the tests with `cargo xtask test`, which fetches it \
             (PyPI nvidia-cuda-nvrtc-cu12) and sets LD_LIBRARY_PATH"
        );
        for arch in ["sm_80", "sm_90"] {
            for file in FILES {
                let ptx = compile(file, arch)
                    .unwrap_or_else(|e| panic!("{} for {arch}: {e:?}", file.name))
                    .to_src();
                assert!(ptx.contains(&format!(".target {arch}")), "{}", file.name);
                // The source's digest, for the simulated GPU to check (64 hex digits + NUL).
                assert!(
                    ptx.contains(&format!(".b8 {SOURCE_DIGEST}[65] = {{")),
                    "{}: no source digest",
                    file.name
                );
                for entry in file.entries {
                    assert!(
                        ptx.contains(&format!(".entry {}(", entry.name)),
                        "{}: no entry {} for {arch}",
                        file.name,
                        entry.name
                    );
                }
            }
        }
    }

    /// ptxas (CI fetches it from PyPI's nvidia-cuda-nvcc-cu12) assembles every kernel for Ampere
    /// and Hopper, as the driver will, and each fits the launch the backend makes: registers ×
    /// threads per block within the 64K-register file, static shared memory within 48 KiB, and
    /// no spills to local memory.
    #[test]
    fn every_kernel_fits_its_launch_in_registers_and_shared_memory() {
        assert!(nvrtc_available(), "run the tests with `cargo xtask test`");
        let ptxas = crate::cuda::ptxas::ptxas().expect(
            "VIGIL_PTXAS names no ptxas: run the tests with `cargo xtask test`, which fetches it \
             (PyPI nvidia-cuda-nvcc-cu12)",
        );
        for arch in ["sm_80", "sm_90"] {
            let resources = crate::cuda::ptxas::resources(&ptxas, arch).unwrap();
            for file in FILES {
                for entry in file.entries {
                    let r = resources
                        .get(entry.name)
                        .unwrap_or_else(|| panic!("no ptxas report for {}", entry.name));
                    eprintln!("{arch} {}: {r:?} at {} threads", entry.name, entry.threads);
                    assert!(r.registers > 0, "{}: {r:?}", entry.name);
                    assert!(
                        r.registers * entry.threads <= 65536,
                        "{} {arch}: {} registers x {} threads exceed the register file",
                        entry.name,
                        r.registers,
                        entry.threads
                    );
                    assert!(r.shared <= 48 * 1024, "{} {arch}: {r:?}", entry.name);
                    assert_eq!(r.spill_stores, 0, "{} {arch} spills: {r:?}", entry.name);
                }
            }
        }
    }

    /// The Rust type a C parameter type is launched with.
    fn rust_type(c: &str) -> String {
        let c = c.trim_start_matches("const ").trim();
        let scalar = |t: &str| -> &'static str {
            match t {
                "bf16" => "Bf16",
                "unsigned short" => "u16",
                "unsigned char" => "u8",
                "unsigned int" => "u32",
                "int" => "i32",
                "float" => "f32",
                "size_t" => "u64",
                other => panic!("no Rust type for the C type `{other}`"),
            }
        };
        match c.strip_suffix('*') {
            Some(pointee) => format!("DevPtr<{}>", scalar(pointee.trim())),
            None => scalar(c).to_owned(),
        }
    }

    /// Every `extern "C" __global__` entry point of `source`: name, then (name, C type) of
    /// each parameter.
    fn c_signatures(source: &str) -> Vec<(String, Vec<(String, String)>)> {
        const MARK: &str = "extern \"C\" __global__ void";
        source
            .split(MARK)
            .skip(1)
            .map(|rest| {
                let open = rest.find('(').unwrap();
                let close = rest.find(')').unwrap();
                let params = rest[open + 1..close]
                    .split(',')
                    .map(|p| {
                        let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
                        let cut = p
                            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .unwrap();
                        (p[cut + 1..].to_owned(), p[..=cut].trim().to_owned())
                    })
                    .collect();
                // The last word before the list: a launch-bounds macro may precede the name.
                let name = rest[..open].split_whitespace().last().unwrap();
                (name.to_owned(), params)
            })
            .collect()
    }

    /// Each argument struct's fields are the kernel's parameters, in order, by name and by type
    /// (a dimension newtype standing for `int`): the compiler checks the call sites against the
    /// structs, this test the structs against C.
    #[test]
    fn the_argument_structs_mirror_the_c_signatures() {
        for file in FILES {
            let c = c_signatures(file.source);
            let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
            let table: Vec<&str> = file.entries.iter().map(|e| e.name).collect();
            assert_eq!(names, table, "{}: entry points", file.name);
            for (entry, (_, params)) in file.entries.iter().zip(&c) {
                let rust: Vec<(String, String)> = entry
                    .params
                    .iter()
                    .map(|(n, t)| {
                        let t = t.replace(' ', "");
                        let abi = if INT_NEWTYPES.contains(&t.as_str()) {
                            "i32".to_owned()
                        } else {
                            t
                        };
                        (n.trim_start_matches("r#").to_owned(), abi)
                    })
                    .collect();
                let from_c: Vec<(String, String)> = params
                    .iter()
                    .map(|(n, t)| (n.clone(), rust_type(t)))
                    .collect();
                assert_eq!(rust, from_c, "{}: {}", file.name, entry.name);
            }
        }
    }

    #[test]
    fn a_kernel_with_an_error_is_reported_not_compiled() {
        if !nvrtc_available() {
            panic!("libnvrtc cannot be loaded: run the tests with `cargo xtask test`");
        }
        let bad = KernelFile {
            name: "bad.cu",
            source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
            entries: &[Entry {
                name: "broken",
                threads: 32,
                params: &[],
            }],
        };
        let err = compile(&bad, "sm_80").expect_err("an undefined name does not compile");
        assert!(format!("{err:?}").contains("undefined_name"), "{err:?}");
    }
}
