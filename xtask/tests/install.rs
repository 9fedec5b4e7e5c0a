//! `cargo xtask install`, run for real into a staging root (`--destdir`), and with `--dry-run`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn install(args: &[&str]) -> (bool, String) {
    let out = Command::new(XTASK)
        .arg("install")
        .args(args)
        .output()
        .expect("run xtask");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_puts_binary_unit_sysusers_and_env_file_under_the_prefix() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().to_str().unwrap();
    // A stand-in binary: installing copies whatever --bin names.
    let (ok, out) = install(&["--prefix", "/opt/vigil", "--destdir", dest, "--bin", XTASK]);
    assert!(ok, "{out}");
    let r = root.path();
    let bin = r.join("opt/vigil/bin/vigil");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(XTASK).unwrap());
    assert_eq!(mode(&bin), 0o755);
    let unit =
        std::fs::read_to_string(r.join("opt/vigil/lib/systemd/system/vigil.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/opt/vigil/bin/vigil serve"),
        "ExecStart names the prefix:\n{unit}"
    );
    assert!(!unit.contains("/usr/local/bin/vigil"));
    let sysusers = std::fs::read_to_string(r.join("opt/vigil/lib/sysusers.d/vigil.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u vigil ")));
    let env = r.join("etc/vigil/vigil.env");
    assert!(std::fs::read_to_string(&env)
        .unwrap()
        .contains("VIGIL_MODEL="));
    assert_eq!(mode(&env), 0o640);

    // A second install keeps the operator's environment file.
    std::fs::write(&env, "VIGIL_PORT=9000\n").unwrap();
    let (ok, out) = install(&["--prefix", "/opt/vigil", "--destdir", dest, "--bin", XTASK]);
    assert!(ok, "{out}");
    assert!(out.contains("keep "), "{out}");
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "VIGIL_PORT=9000\n");
}

#[test]
fn dry_run_prints_every_step_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().to_str().unwrap();
    let (ok, out) = install(&["--dry-run", "--destdir", dest]);
    assert!(ok, "{out}");
    assert!(out.contains("would run: cargo build --release"), "{out}");
    for path in [
        "usr/local/bin/vigil",
        "usr/local/lib/systemd/system/vigil.service",
        "usr/local/lib/sysusers.d/vigil.conf",
        "etc/vigil/vigil.env",
    ] {
        assert!(out.contains(path), "{path} in:\n{out}");
    }
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn bad_arguments_are_named() {
    let (ok, out) = install(&["--prefix", "relative/dir", "--dry-run"]);
    assert!(!ok);
    assert!(
        out.contains("--prefix relative/dir: must be an absolute path"),
        "{out}"
    );
    let (ok, out) = install(&["--frobnicate"]);
    assert!(!ok);
    assert!(out.contains("unknown argument \"--frobnicate\""), "{out}");
}
