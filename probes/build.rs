//! Compiles the eBPF programs (C, under bpf/) with clang into `$OUT_DIR/sched.bpf.o`, which the
//! crate embeds. CO-RE (`-g` keeps the BTF relocations) makes one object fit every kernel with
//! BTF.
//!
//! A machine without clang or libbpf's headers still builds Vigil: the object is left empty, a
//! cargo warning says why, and at run time the eBPF probe reports itself `not_built` while
//! everything else works. `VIGIL_SCHED_BPF_OBJ=path` embeds a prebuilt object instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("sched.bpf.o");
    for f in ["bpf/sched.bpf.c", "bpf/sched.h", "bpf/vmlinux_min.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=VIGIL_SCHED_BPF_OBJ");
    println!("cargo:rerun-if-env-changed=CLANG");
    // Built without clang or libbpf's headers, try again once they are installed (a missing
    // path counts as changed, so this reruns on every build until then).
    println!("cargo:rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
    println!("cargo:rerun-if-changed=/usr/bin/clang");

    let result = match std::env::var_os("VIGIL_SCHED_BPF_OBJ") {
        Some(prebuilt) => std::fs::copy(&prebuilt, &obj)
            .map(drop)
            .map_err(|e| format!("copying VIGIL_SCHED_BPF_OBJ: {e}")),
        None => compile(&obj),
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

fn compile(obj: &std::path::Path) -> Result<(), String> {
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => return Err(format!("no eBPF build for target arch {other}")),
        Err(_) => return Err("CARGO_CFG_TARGET_ARCH unset".into()),
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let output = Command::new(&clang)
        .args([
            "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
        ])
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
