//! Email through a real SMTP server this project did not write (Python's `aiosmtpd`, installed by
//! `.ci/run`), and the received messages read back with Python's standard `email` parser.

mod common;

use common::jobs::job;
use herald_connectors::channels::smtp::{Smtp, SmtpConfig};
use herald_connectors::secret::SecretSource;
use herald_connectors::unsubscribe::UnsubscribeLinks;
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `aiosmtpd` writing every message it accepts into a Maildir; killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
}

impl SmtpServer {
    fn start(maildir: &Path) -> SmtpServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (`pip install aiosmtpd`, done by .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer { child, port }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message in the Maildir, parsed by Python's `email` package: headers, and each
/// non-multipart part's content type and decoded text.
fn parsed_messages(maildir: &Path) -> Vec<Value> {
    const SCRIPT: &str = r#"
import email, email.policy, json, mailbox, sys
out = []
for message in mailbox.Maildir(sys.argv[1], factory=None):
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    parts = [{"type": p.get_content_type(), "text": p.get_content()}
             for p in parsed.walk() if not p.is_multipart()]
    out.append({"headers": {k: str(v) for k, v in parsed.items()},
                "type": parsed.get_content_type(), "parts": parts})
print(json.dumps(out))
"#;
    let out = Command::new("python3").args(["-c", SCRIPT]).arg(maildir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn email(n: u32, to: &str, category: &str) -> DeliveryJob {
    let content = RenderedContent::Email {
        subject: format!("주문 {n} 배송"),
        text: format!("Order {n} shipped."),
        html: format!("<p>Order <b>{n}</b> shipped.</p>"),
    };
    job(n, "email", Target::Email { address: to.into() }, content, category)
}

#[tokio::test]
async fn smtp_delivers_multipart_mail_with_the_right_headers() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let server = SmtpServer::start(&maildir);
    let config = SmtpConfig {
        url: format!("smtp://127.0.0.1:{}", server.port),
        username: None,
        password: None,
        from: "Herald <no-reply@herald.example>".into(),
        timeout: Duration::from_secs(10),
        max_connections: 4,
        messages_per_second: None,
    };
    let secret = SecretSource::Inline("unsubscribe-key".into()).resolve().unwrap();
    let links = Arc::new(UnsubscribeLinks::new("https://herald.example/v1/unsubscribe", &secret));
    let mut smtp = Smtp::new(&config, Some(links.clone())).unwrap();
    let jobs = [email(1, "ada@example.com", "transactional"), email(2, "bob@example.com", "marketing")];
    let outcomes = smtp.send(&jobs).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, SendOutcome::Delivered { .. })), "{outcomes:?}");

    let mut messages = parsed_messages(&maildir);
    messages.sort_by_key(|m| m["headers"]["To"].as_str().unwrap_or_default().to_string());
    assert_eq!(messages.len(), 2);
    for (message, job) in messages.iter().zip(&jobs) {
        let headers = &message["headers"];
        assert_eq!(message["type"], "multipart/alternative");
        assert_eq!(headers["From"], "Herald <no-reply@herald.example>");
        assert!(headers["Date"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(headers["Message-ID"], format!("<{}@herald.example>", job.delivery_id.0));
        assert_eq!(headers["X-Herald-Delivery-Id"], job.delivery_id.0.as_str());
        let n = job.notification_id.0.trim_start_matches("n-");
        assert_eq!(headers["Subject"], format!("주문 {n} 배송"), "UTF-8 subject decoded");
        let parts = message["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0]["type"], "text/plain");
        assert_eq!(parts[0]["text"].as_str().unwrap().trim_end(), format!("Order {n} shipped."));
        assert_eq!(parts[1]["type"], "text/html");
        assert_eq!(parts[1]["text"].as_str().unwrap().trim_end(), format!("<p>Order <b>{n}</b> shipped.</p>"));
    }
    // Only the marketing mail offers one-click unsubscribe (RFC 8058).
    assert!(messages[0]["headers"].get("List-Unsubscribe").is_none());
    let marketing = &messages[1]["headers"];
    // The long value is folded (RFC 5322); unfolded, leading whitespace is not part of it.
    let link = marketing["List-Unsubscribe"].as_str().unwrap().trim();
    let token = link
        .strip_prefix("<https://herald.example/v1/unsubscribe?token=")
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or_else(|| panic!("not a signed link: {link}"));
    let claim = links.verify(token).unwrap();
    assert_eq!((claim.user_id.as_str(), claim.category.as_str()), (jobs[1].user_id.as_str(), "marketing"));
    assert_eq!(claim.delivery_id, jobs[1].delivery_id.0);
    assert_eq!(marketing["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_retryable() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = SmtpConfig {
        url: format!("smtp://127.0.0.1:{port}"),
        username: None,
        password: None,
        from: "no-reply@herald.example".into(),
        timeout: Duration::from_secs(2),
        max_connections: 1,
        messages_per_second: None,
    };
    let mut smtp = Smtp::new(&config, None).unwrap();
    let outcomes = smtp.send(&[email(1, "ada@example.com", "transactional")]).await.unwrap();
    assert!(matches!(outcomes[0], SendOutcome::Retryable { .. }), "{outcomes:?}");
}
