//! `cargo xtask install`: the release binary with its systemd unit and files.
//!
//! `cargo xtask install [--prefix DIR] [--destdir DIR] [--bin FILE] [--dry-run]`: builds the
//! release binary and installs it with the systemd unit, the sysusers.d entry and the
//! environment file:
//!
//! | what | where |
//! |---|---|
//! | `vigil` | `PREFIX/bin/vigil` |
//! | `systemd/vigil.service` (ExecStart rewritten to `PREFIX/bin/vigil`) | `PREFIX/lib/systemd/system/` |
//! | `systemd/vigil.sysusers` | `PREFIX/lib/sysusers.d/vigil.conf` |
//! | `systemd/vigil.env` (kept if it exists: it is the operator's) | `/etc/vigil/vigil.env` |
//!
//! `PREFIX` defaults to `/usr/local` (systemd searches `/usr/local/lib/systemd/system` and
//! `/usr/local/lib/sysusers.d`). `--destdir` stages everything under another root (packaging),
//! `--bin` installs a binary built elsewhere instead of building one, and `--dry-run` prints what
//! would be done and does nothing. Installing onto the live system (no `--destdir`) ends by
//! creating the user and reloading systemd when systemd runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::workspace_root;

/// The binary path the unit in the repository names; replaced by `PREFIX/bin/vigil`.
pub(crate) const UNIT_BINARY: &str = "/usr/local/bin/vigil";

struct Options {
    prefix: PathBuf,
    destdir: Option<PathBuf>,
    bin: Option<PathBuf>,
    dry_run: bool,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut opts = Options {
        prefix: PathBuf::from("/usr/local"),
        destdir: None,
        bin: None,
        dry_run: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--prefix" => opts.prefix = value("--prefix")?,
            "--destdir" => opts.destdir = Some(value("--destdir")?),
            "--bin" => opts.bin = Some(value("--bin")?),
            "--dry-run" => opts.dry_run = true,
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask install [--prefix DIR] [--destdir DIR] [--bin FILE] [--dry-run]"
            ),
        }
    }
    if !opts.prefix.is_absolute() {
        bail!(
            "--prefix {}: must be an absolute path (the unit names the binary by it)",
            opts.prefix.display()
        );
    }
    Ok(opts)
}

/// The unit with its ExecStart naming the binary under `prefix`.
pub(crate) fn unit_for_prefix(unit: &str, prefix: &Path) -> String {
    let bin = prefix.join("bin/vigil");
    unit.replace(UNIT_BINARY, &bin.to_string_lossy())
}

/// `path` (absolute) under `destdir`, if one is given.
fn staged(destdir: Option<&Path>, path: &Path) -> PathBuf {
    match destdir {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

enum Content {
    File(PathBuf),
    Text(String),
}

struct Step {
    content: Content,
    to: PathBuf,
    mode: u32,
    /// Leave an existing file alone (configuration).
    keep_existing: bool,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = workspace_root();
    let bin = match &opts.bin {
        Some(bin) => bin.clone(),
        None if opts.dry_run => {
            println!("would run: cargo build --release --bin vigil");
            root.join("target/release/vigil")
        }
        None => crate::release_vigil()?,
    };
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel)).with_context(|| format!("reading {rel}"))
    };
    let dest = |p: &str| staged(opts.destdir.as_deref(), &opts.prefix.join(p));
    let steps = [
        Step {
            content: Content::File(bin),
            to: dest("bin/vigil"),
            mode: 0o755,
            keep_existing: false,
        },
        Step {
            content: Content::Text(unit_for_prefix(
                &read("systemd/vigil.service")?,
                &opts.prefix,
            )),
            to: dest("lib/systemd/system/vigil.service"),
            mode: 0o644,
            keep_existing: false,
        },
        Step {
            content: Content::Text(read("systemd/vigil.sysusers")?),
            to: dest("lib/sysusers.d/vigil.conf"),
            mode: 0o644,
            keep_existing: false,
        },
        Step {
            content: Content::Text(read(crate::docs::ENV_FILE)?),
            to: staged(opts.destdir.as_deref(), Path::new("/etc/vigil/vigil.env")),
            mode: 0o640,
            keep_existing: true,
        },
    ];
    for step in &steps {
        install(step, opts.dry_run)?;
    }
    if opts.destdir.is_none() {
        finish_live(opts.dry_run)?;
    }
    Ok(())
}

fn install(step: &Step, dry_run: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let to = &step.to;
    if step.keep_existing && to.exists() {
        println!("keep {} (exists)", to.display());
        return Ok(());
    }
    let what = match &step.content {
        Content::File(from) => from.display().to_string(),
        Content::Text(_) => "generated".to_owned(),
    };
    println!("install -m {:o} {what} {}", step.mode, to.display());
    if dry_run {
        return Ok(());
    }
    let dir = to.parent().context("an install path has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match &step.content {
        Content::File(from) => {
            std::fs::copy(from, to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Content::Text(text) => {
            std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?
        }
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(step.mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// On the live system: create the user and reload units, when systemd is the init system.
fn finish_live(dry_run: bool) -> anyhow::Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        println!("systemd is not running here: run `systemd-sysusers` and `systemctl daemon-reload` on the target");
        return Ok(());
    }
    for cmd in [&["systemd-sysusers"][..], &["systemctl", "daemon-reload"]] {
        println!("run: {}", cmd.join(" "));
        if !dry_run {
            let status = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .status()?;
            anyhow::ensure!(status.success(), "{} failed", cmd.join(" "));
        }
    }
    println!("then: put the model at the path VIGIL_MODEL names in /etc/vigil/vigil.env and run `systemctl enable --now vigil`");
    Ok(())
}
