//! Finding the `herald` binary under test.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `herald` binary, made ready once per test process.
///
/// `HERALD_BIN` names a binary to use as is. Otherwise the binary is the one beside this test's
/// profile directory (`current_exe()` is `<target>/<profile>/deps/<test>-<hash>`, so the binary is
/// `<target>/<profile>/herald`), and `cargo build -p herald --bin herald` brings it up to date first.
/// Cargo builds only a package's own binaries for its integration tests, and `herald` is another
/// package; building unconditionally (a no-op when fresh) also keeps a stale binary from an older
/// checkout from being tested in place of the current source.
pub fn herald_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_and_build)
}

fn locate_and_build() -> PathBuf {
    if let Some(bin) = env::var_os("HERALD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "HERALD_BIN={} is not a file", bin.display());
        return bin;
    }
    let exe = env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("test binary {} is not in <target>/<profile>/deps", exe.display()));
    let target_dir = profile_dir.parent().expect("a profile directory lives in a target directory");
    let bin = profile_dir.join(format!("herald{}", env::consts::EXE_SUFFIX));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--quiet", "-p", "herald", "--bin", "herald", "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
        None => panic!("cannot tell the cargo profile of {}", profile_dir.display()),
    }
    eprintln!("building the herald binary: {build:?}");
    let out = build.output().unwrap_or_else(|e| panic!("cannot run {cargo:?} to build herald: {e}"));
    assert!(
        out.status.success(),
        "`cargo build -p herald --bin herald` failed ({}), so there is no binary to test:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.is_file(), "cargo built herald but {} does not exist", bin.display());
    bin
}
