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

/// A P-256 key in PKCS#8 PEM (test-only, never used anywhere else).
const APNS_KEY: &str = "key = \"\"\"\n-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgyvmrs4m1mZh8O1lm\n\
L4ySX8iaESnfPwgMF6Oe+LGa3W2hRANCAAR8VNbF1SjIwhXouHwI/39mhUZ4RSWE\n\
VHXLNxS0ybYVTC6ELjtuzAQOPg0pTMm6F1flzJ9mamcKZJYHsah/FHy0\n\
-----END PRIVATE KEY-----\n\"\"\"";

/// `[providers.apns]` with token auth, the `key` line given, and extra lines in `[…auth]`
/// or, for a `base_url`, in the provider section.
fn apns(key: &str, extra: &str) -> String {
    let (top, auth) = if extra.starts_with("base_url") { (extra, "") } else { ("", extra) };
    format!(
        "[providers.apns]\ntopic = \"com.example.app\"\n{top}\n[providers.apns.auth]\nkind = \"token\"\n\
         key_id = \"K1\"\nteam_id = \"T1\"\n{key}\n{auth}\n"
    )
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
        (apns("key = { file = \"/nonexistent/AuthKey.p8\" }", ""), "/nonexistent/AuthKey.p8"),
        (apns("key = \"not a PEM key\"", ""), "providers.apns.auth"),
        (apns(APNS_KEY, "base_url = \"ftp://api.push.apple.com\""), "providers.apns.base_url"),
        (apns(APNS_KEY, "token_refresh_every = \"30m\""), "token_refresh_every"),
        ("[providers.fcm]\nservice_account = \"{ not json\"\n".to_string(), "providers.fcm.service_account"),
        (
            "[providers.fcm]\nservice_account = { file = \"/nonexistent/sa.json\" }\n".to_string(),
            "/nonexistent/sa.json",
        ),
        (
            "[providers.webpush]\nvapid_private_key = \"short\"\nsubject = \"mailto:a@b.c\"\n".to_string(),
            "providers.webpush",
        ),
        ("[providers.sendgrid]\napi_kee = \"k\"\nfrom = \"a@b.c\"\n".to_string(), "api_kee"),
        (
            "[providers.vonage]\napi_key = \"k\"\napi_secret = { env = \"HERALD_UNSET_VONAGE\" }\nfrom = \"H\"\n"
                .to_string(),
            "HERALD_UNSET_VONAGE",
        ),
        ("[channels]\nios = \"fcm\"\n".to_string(), "channels.ios"),
    ];
    for (text, named) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = herald(&["config", "check", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(err.contains(named), "{named} not named in {err}\nfor:\n{text}");
    }
    // A good APNs section passes: the cases above fail for their own reason.
    std::fs::write(&path, apns(APNS_KEY, "")).unwrap();
    let out = herald(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

#[test]
fn serve_refuses_a_bad_provider_config_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, apns("key = { file = \"/nonexistent/AuthKey.p8\" }", "")).unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", path.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("serve started with a key file that does not exist");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/AuthKey.p8") && err.contains("providers.apns"), "{err}");
    assert!(!data.exists(), "nothing was created before the configuration was checked");
}

/// `herald bench` in both modes delivers every notification of its 10:1:5 mix once (2 devices
/// per push user: 1.625 deliveries a notification) and reports what it measured.
#[test]
fn bench_delivers_everything_with_and_without_a_backlog() {
    for backlog in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec!["bench", "--notifications", "1600", "--users", "40", "--json", "--data-dir"];
        args.push(data.to_str().unwrap());
        if backlog {
            args.push("--backlog");
        }
        let out = herald(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(report["notifications"], 1600);
        assert_eq!(report["deliveries"], 2600, "{report}");
        assert_eq!(report["backlog"], if backlog { 1600 } else { 0 });
        assert!(report["throughput_per_s"].as_f64().unwrap() > 0.0);
        assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0, "{report}");
    }
}
