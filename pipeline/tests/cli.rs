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
    for command in ["serve", "send", "contacts", "templates", "keys", "config", "dlq", "bench"] {
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
        &["dlq", "list", "--help"],
        &["dlq", "show", "--help"],
        &["dlq", "replay", "--help"],
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

#[test]
fn config_check_names_the_provider_field_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    let twilio = |extra: &str| {
        format!(
            "[channels]\nsms = \"twilio\"\n[providers.twilio]\naccount_sid = \"AC1\"\nfrom = \"+15005550006\"\n{extra}\n"
        )
    };
    let cases = [
        ("[channels]\nsms = \"twilio\"\n".to_string(), "[providers.twilio]"),
        ("[channels]\nsms = \"pigeon\"\n".to_string(), "pigeon"),
        (twilio("auth_token = { env = \"HERALD_TEST_UNSET_TOKEN\" }"), "HERALD_TEST_UNSET_TOKEN"),
        (twilio("auth_token = { file = \"/nonexistent/twilio-token\" }"), "/nonexistent/twilio-token"),
        (twilio("auth_token = \"t\"\nbase_url = \"ftp://example.com\""), "providers.twilio.base_url"),
        (twilio("auth_token = \"t\"\nmax_concurency = 3"), "max_concurency"),
        ("[channels]\nemail = \"smtp\"\n".to_string(), "[providers.smtp]"),
        ("[providers.smtp]\nurl = \"gopher://x\"\nfrom = \"a@b.c\"\n".to_string(), "providers.smtp.url"),
    ];
    for (text, named) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = herald(&["config", "check", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(err.contains(named), "{named} not named in {err}\nfor:\n{text}");
    }
    // A complete section passes, and the inline token is not printed back.
    std::fs::write(&path, twilio("auth_token = \"s3cr3t-token\"")).unwrap();
    let out = herald(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("twilio") && !printed.contains("s3cr3t"), "{printed}");
}

#[test]
fn dlq_lists_an_empty_queue_and_replay_needs_a_choice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = herald(&["dlq", "list", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letters"));
    let out = herald(&["dlq", "replay", "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--delivery-id"));
    let out = herald(&["dlq", "show", "nope", "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no open dead letter for delivery nope"));
}
