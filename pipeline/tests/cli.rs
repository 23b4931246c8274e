//! The binary's help teaches every command (and, because this package has an
//! integration test, `cargo test --workspace` builds `herald` before any test
//! runs, so the end-to-end tests in `tests/` find it).

use std::process::Command;

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald")).args(args).output().expect("herald runs")
}

#[test]
fn help_lists_every_command() {
    let out = herald(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "send", "contacts", "templates", "keys", "config", "bench"] {
        assert!(text.contains(command), "--help does not mention {command}:\n{text}");
    }
}

#[test]
fn each_command_has_help() {
    for args in [
        &["serve", "--help"][..],
        &["send", "--help"],
        &["contacts", "import", "--help"],
        &["templates", "add", "--help"],
        &["keys", "create", "--help"],
        &["config", "check", "--help"],
        &["bench", "--help"],
    ] {
        let out = herald(args);
        assert!(out.status.success(), "{args:?} failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?} prints no usage");
    }
}

#[test]
fn config_check_rejects_unknown_fields_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[api]\nlisten_port = 1\n").unwrap();
    let out = herald(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
}
