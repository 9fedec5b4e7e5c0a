//! Compiles the eBPF programs with clang (CO-RE) for the crate to embed.
//!
//! Compiles the eBPF programs (C, under bpf/) with clang into `$OUT_DIR/sched.bpf.o`, which the
//! crate embeds. CO-RE (`-g` keeps the BTF relocations) makes one object fit every kernel with
//! BTF.
//!
//! Without clang (the README's first command on a fresh machine), the object committed next to
//! the sources (`bpf/sched.bpf.<arch>.o`, written by `cargo xtask bpf-object`) is embedded
//! instead, as cilium/ebpf's bpf2go does: portable across kernels by design. It is used only if
//! `bpf/sched.bpf.o.sha256` says it was compiled from the sources and flags as they are now; a
//! test fails when it is stale. Only when neither works is the object left empty: a cargo
//! warning says why, and at run time the probe reports itself `not_built`.
//! `VIGIL_SCHED_BPF_OBJ=path` embeds a prebuilt object instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const SOURCES: [&str; 3] = ["bpf/sched.bpf.c", "bpf/sched.h", "bpf/vmlinux_min.h"];
const FLAGS: &[&str] = &[
    "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
];
/// The architectures objects are committed for (clang's `__TARGET_ARCH_` names).
const ARCHES: [&str; 2] = ["x86", "arm64"];
const COMMITTED_HASH: &str = "bpf/sched.bpf.o.sha256";

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("sched.bpf.o");
    for f in SOURCES {
        println!("cargo:rerun-if-changed={f}");
    }
    for arch in ARCHES {
        println!("cargo:rerun-if-changed={}", committed(arch).display());
    }
    println!("cargo:rerun-if-changed={COMMITTED_HASH}");
    println!("cargo:rerun-if-env-changed=VIGIL_SCHED_BPF_OBJ");
    println!("cargo:rerun-if-env-changed=VIGIL_SCHED_BPF_EXPORT");
    println!("cargo:rerun-if-env-changed=CLANG");
    // Built without clang or libbpf's headers, try again once they are installed (a missing
    // path counts as changed, so this reruns on every build until then).
    println!("cargo:rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
    println!("cargo:rerun-if-changed=/usr/bin/clang");

    let hash = sources_hash();
    // For the staleness test: what the committed hash must say.
    println!("cargo:rustc-env=VIGIL_SCHED_BPF_SOURCES_HASH={hash}");

    if let Some(dir) = std::env::var_os("VIGIL_SCHED_BPF_EXPORT") {
        // `cargo xtask bpf-object`: refresh the committed objects and their hash.
        let dir = PathBuf::from(dir);
        for arch in ARCHES {
            compile(&dir.join(format!("sched.bpf.{arch}.o")), arch)
                .unwrap_or_else(|e| panic!("compiling for {arch}: {e}"));
        }
        std::fs::write(dir.join("sched.bpf.o.sha256"), format!("{hash}\n"))
            .expect("write the sources' hash");
    }

    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => Ok("x86"),
        Ok("aarch64") => Ok("arm64"),
        Ok(other) => Err(format!("no eBPF build for target arch {other}")),
        Err(_) => Err("CARGO_CFG_TARGET_ARCH unset".to_owned()),
    };
    let result = match std::env::var_os("VIGIL_SCHED_BPF_OBJ") {
        Some(prebuilt) => std::fs::copy(&prebuilt, &obj)
            .map(drop)
            .map_err(|e| format!("copying VIGIL_SCHED_BPF_OBJ: {e}")),
        None => arch.and_then(|arch| {
            compile(&obj, arch).or_else(|clang| {
                use_committed(&obj, arch, &hash)
                    .map_err(|committed| format!("{clang}; {committed}"))
            })
        }),
    };
    let error = match result {
        Ok(()) => String::new(),
        Err(why) => {
            println!("cargo:warning=eBPF probe not built ({why}); install clang and libbpf-dev to build it");
            std::fs::write(&obj, b"").expect("write empty object");
            why
        }
    };
    // The reason the object is empty, for the probe's log line.
    println!(
        "cargo:rustc-env=VIGIL_SCHED_BPF_BUILD_ERROR={}",
        error.replace('\n', " ")
    );
}

fn committed(arch: &str) -> PathBuf {
    PathBuf::from(format!("bpf/sched.bpf.{arch}.o"))
}

/// SHA-256 of the compile flags and every source file: what an object is compiled from.
fn sources_hash() -> String {
    let mut h = Sha256::new();
    h.update(FLAGS.join(" ").as_bytes());
    for f in SOURCES {
        h.update([0]);
        h.update(std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}")));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The committed object for `arch`, if it was compiled from the sources as they are.
fn use_committed(obj: &Path, arch: &str, hash: &str) -> Result<(), String> {
    let recorded = std::fs::read_to_string(COMMITTED_HASH).unwrap_or_default();
    if recorded.trim() != hash {
        return Err(format!(
            "the committed {} is stale (run `cargo xtask bpf-object`)",
            committed(arch).display()
        ));
    }
    std::fs::copy(committed(arch), obj)
        .map(drop)
        .map_err(|e| format!("{}: {e}", committed(arch).display()))?;
    println!(
        "cargo:warning=clang missing: embedding the committed eBPF object {}",
        committed(arch).display()
    );
    Ok(())
}

fn compile(obj: &Path, arch: &str) -> Result<(), String> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let output = Command::new(&clang)
        .args(FLAGS)
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .args(["-Ibpf", "-c", "bpf/sched.bpf.c", "-o"])
        .arg(obj)
        .output()
        .map_err(|e| format!("running {clang}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{clang} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    // Dropping DWARF keeps .BTF and .BTF.ext (what CO-RE needs) and shrinks the object ~10x.
    let _ = Command::new("llvm-strip").arg("-g").arg(obj).status();
    Ok(())
}
