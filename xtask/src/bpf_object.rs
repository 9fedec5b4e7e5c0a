//! `cargo xtask bpf-object`: the committed eBPF objects, recompiled.
//!
//! `cargo xtask bpf-object`: recompiles the eBPF probe for every architecture into
//! `probes/bpf/sched.bpf.<arch>.o` and records the sources' hash in `sched.bpf.o.sha256`. The
//! objects are committed so that a build without clang still has the probe; the probes'
//! tests fail when they are stale. The compile itself is `probes/build.rs`'s, asked to export.

use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

pub(crate) fn run() -> anyhow::Result<()> {
    let dir = workspace_root().join("probes/bpf");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "vigil-probes"])
        .env("VIGIL_SCHED_BPF_EXPORT", &dir)
        .current_dir(workspace_root())
        .status()
        .context("building vigil-probes")?;
    if !status.success() {
        bail!("compiling the eBPF objects failed (clang and libbpf-dev installed?)");
    }
    println!(
        "wrote {}/sched.bpf.{{x86,arm64}}.o and sched.bpf.o.sha256: commit them",
        dir.display()
    );
    Ok(())
}
