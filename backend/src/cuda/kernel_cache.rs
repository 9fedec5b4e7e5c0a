//! An on-disk cache of the kernels' PTX, so that a restart skips NVRTC.
//!
//! An on-disk cache of the kernels' PTX, so that a restart does not pay NVRTC again: one file
//! per kernel file, named by a hash of everything the PTX depends on (the sources, the
//! architecture, the compile options and NVRTC's version). A changed kernel or a new NVRTC
//! gets a new name; stale files are never read.
//!
//! The folder is systemd's `CacheDirectory=` (`$CACHE_DIRECTORY`), else
//! `$XDG_CACHE_HOME/vigil/kernels`, else `~/.cache/vigil/kernels`. Any failure to read or write
//! it only costs a compile.

use std::path::{Path, PathBuf};

use cudarc::nvrtc::{CompileError, Ptx};
use sha2::{Digest, Sha256};

use super::kernels::{compile, KernelFile, COMMON, OPTIONS, SOURCE_DIGEST};

/// Where the cache lives here, if anywhere.
pub(crate) fn default_dir() -> Option<PathBuf> {
    dir_from(&|name| std::env::var(name).ok())
}

/// [`default_dir`] with the environment as `env`.
pub(crate) fn dir_from(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("CACHE_DIRECTORY") {
        // systemd may list several, colon-separated; the first is ours.
        let first = dir.split(':').next()?.to_owned();
        return Some(PathBuf::from(first).join("kernels"));
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("vigil").join("kernels"))
}

/// NVRTC's version, part of the key.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints; only called once libnvrtc is known to load.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

/// The cache file of `file` for `arch`.
pub(crate) fn entry(dir: &Path, file: &KernelFile, arch: &str) -> PathBuf {
    let mut h = Sha256::new();
    // The digest global's name stands for how `compile` extends the source: PTX cached before
    // it carried the digest is not taken for PTX that does.
    for part in [COMMON, file.source, arch, &OPTIONS.join(" "), SOURCE_DIGEST] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(format!("{:?}", nvrtc_version()).as_bytes());
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!(
        "{}-{arch}-{hash}.ptx",
        file.name.trim_end_matches(".cu")
    ))
}

/// Outcome of [`compile_cached`], for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Cache,
    Compiled,
}

/// `file`'s PTX for `arch`: from the cache when there, else compiled and stored.
pub(crate) fn compile_cached(
    file: &KernelFile,
    arch: &str,
    dir: Option<&Path>,
) -> Result<(Ptx, Source), CompileError> {
    let path = dir.map(|d| entry(d, file, arch));
    if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok((Ptx::from_src(ptx), Source::Cache));
    }
    let ptx = compile(file, arch)?;
    if let Some(path) = path {
        if let Err(e) = store(&path, &ptx.to_src()) {
            tracing::debug!("kernel cache {}: {e}", path.display());
        }
    }
    Ok((ptx, Source::Compiled))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn store(path: &Path, ptx: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, ptx)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernels::{nvrtc_available, FILES};

    #[test]
    fn a_second_compile_comes_from_the_cache_and_other_archs_get_their_own_entry() {
        assert!(nvrtc_available(), "run with `cargo xtask test` (libnvrtc)");
        let dir = tempfile::tempdir().unwrap();
        let file = &FILES[0];
        let (first, how) = compile_cached(file, "sm_80", Some(dir.path())).unwrap();
        assert_eq!(how, Source::Compiled);
        let (second, how) = compile_cached(file, "sm_80", Some(dir.path())).unwrap();
        assert_eq!(how, Source::Cache);
        assert_eq!(first.to_src(), second.to_src());
        let (_, how) = compile_cached(file, "sm_90", Some(dir.path())).unwrap();
        assert_eq!(how, Source::Compiled);
        assert_ne!(
            entry(dir.path(), file, "sm_80"),
            entry(dir.path(), file, "sm_90")
        );
        assert_ne!(
            entry(dir.path(), &FILES[0], "sm_80"),
            entry(dir.path(), &FILES[1], "sm_80")
        );
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "one entry per (file, arch), no temporary left");
        // No folder: compiled every time, nothing written.
        let (_, how) = compile_cached(file, "sm_80", None).unwrap();
        assert_eq!(how, Source::Compiled);
    }

    #[test]
    fn the_cache_follows_systemd_then_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        const ALL: &[(&str, &str)] = &[
            ("CACHE_DIRECTORY", "/var/cache/vigil:/var/cache/other"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        let at = |vars: &'static [(&'static str, &'static str)]| dir_from(&env(vars));
        assert_eq!(at(ALL), Some("/var/cache/vigil/kernels".into()));
        assert_eq!(at(&ALL[1..]), Some("/xdg/vigil/kernels".into()));
        assert_eq!(at(&ALL[2..]), Some("/home/u/.cache/vigil/kernels".into()));
        assert_eq!(
            at(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")]),
            Some("/h/.cache/vigil/kernels".into())
        );
        assert_eq!(at(&[]), None);
    }
}
