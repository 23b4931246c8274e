//! Herald's SMTP connector (lettre, pooled) against the sandbox's SMTP server, over real
//! sockets: delivery and the sandbox's view of it, every result class, holds, and throughput.

mod common;

use common::jobs::job;
use herald_connectors::channels::smtp::{Smtp, SmtpConfig};
use herald_loadtest::sandbox::smtp::INBOX_SIZE;
use herald_loadtest::sandbox::{Faults, Sandbox, StatsView};
use herald_schemas::channel::{Channel, DELIVERY_ID_HEADER, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn email(n: u32, address: &str) -> DeliveryJob {
    let target = Target::Email { address: address.into() };
    let content = RenderedContent::Email {
        subject: format!("Message {n}"),
        text: format!("Hello {n}.\n.\n.. a line that starts with dots\n"),
        html: format!("<p>Hello {n}.</p>"),
    };
    job(n, "email", target, content, "transactional")
}

async fn sandbox(faults: Faults) -> Sandbox {
    let any = "127.0.0.1:0".parse().unwrap();
    Sandbox::start_with_smtp(any, Some(any), faults).await.unwrap()
}

fn smtp(sandbox: &Sandbox, timeout: Duration, max_connections: u32) -> Smtp {
    let config = SmtpConfig {
        url: sandbox.smtp_url().unwrap(),
        username: None,
        password: None,
        from: "Herald <noreply@herald.example>".into(),
        timeout,
        max_connections,
        messages_per_second: None,
    };
    Smtp::new(&config, None).unwrap()
}

fn stats(sandbox: &Sandbox) -> StatsView {
    sandbox.state.view()["smtp"]
}

#[tokio::test]
async fn smtp_delivers_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let mut smtp = smtp(&sandbox, Duration::from_secs(5), 4);
    let jobs = [email(1, "ada@example.org"), email(2, "unknown@example.org"), email(3, "full@example.org")];
    let outcomes = smtp.send(&jobs).await.unwrap();
    assert!(matches!(&outcomes[0], SendOutcome::Delivered { .. }), "{outcomes:?}");
    assert!(matches!(&outcomes[1], SendOutcome::BadAddress { reason } if reason.contains("550")), "{outcomes:?}");
    assert!(matches!(&outcomes[2], SendOutcome::Retryable { reason, .. } if reason.contains("452")), "{outcomes:?}");

    // The sandbox saw the delivery id, and the message as the connector wrote it.
    let inbox = sandbox.smtp_inbox();
    assert_eq!(inbox.len(), 1);
    let mail = &inbox[0];
    assert_eq!(mail.header(DELIVERY_ID_HEADER), Some(jobs[0].delivery_id.0.as_str()));
    assert_eq!(mail.header("Message-ID"), Some(format!("{}@herald.example", jobs[0].delivery_id.0).as_str()));
    assert_eq!(mail.header("Subject"), Some("Message 1"));
    assert_eq!(mail.from, "noreply@herald.example");
    assert_eq!(mail.recipients, ["ada@example.org"]);

    // The same delivery again is accepted and counted as a duplicate.
    assert!(matches!(smtp.send(&jobs[..1]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    assert_eq!(stats(&sandbox), StatsView { requests: 4, accepted: 2, rejected: 2, duplicates: 1 });
    sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_temporary_failures_and_holds_are_retryable() {
    // Every message fails before acceptance: 421 and a closed connection, 451 after the data, or
    // a hold past the client's timeout, then a dropped connection.
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(2), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut smtp = smtp(&sandbox, Duration::from_millis(300), 8);
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| email(n, &format!("user{n}@example.org"))).collect();
    let outcomes = smtp.send(&jobs).await.unwrap();
    let (mut closed, mut failed, mut held) = (0, 0, 0);
    for outcome in &outcomes {
        match outcome {
            SendOutcome::Retryable { reason, .. } if reason.contains("421") => closed += 1,
            SendOutcome::Retryable { reason, .. } if reason.contains("451") => failed += 1,
            SendOutcome::Retryable { .. } => held += 1,
            other => panic!("not retryable: {other:?}"),
        }
    }
    // Each kind has a third of the draws: all three turn up in 30 (a miss is ~1e-5 likely).
    assert!(closed > 0 && failed > 0 && held > 0, "421 {closed}, 451 {failed}, held {held}: {outcomes:?}");
    let seen = stats(&sandbox);
    assert_eq!((seen.requests, seen.accepted, seen.rejected), (30, 0, 30));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_accept_then_hold_is_retryable_and_the_resend_a_duplicate() {
    let faults = Faults { accept_then_timeout_rate: 1.0, hold: Duration::from_secs(2), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut smtp = smtp(&sandbox, Duration::from_millis(300), 2);
    let jobs = [email(1, "ada@example.org")];
    let outcome = &smtp.send(&jobs).await.unwrap()[0];
    assert!(matches!(outcome, SendOutcome::Retryable { .. }), "{outcome:?}");

    // The provider took it although the client saw a timeout; the retry is a duplicate.
    sandbox.state.set_faults(Faults::default());
    assert!(matches!(smtp.send(&jobs).await.unwrap()[0], SendOutcome::Delivered { .. }));
    assert_eq!(stats(&sandbox), StatsView { requests: 2, accepted: 2, rejected: 0, duplicates: 1 });
    sandbox.shutdown().await;
}

/// lettre's tokio transport applies `timeout` to connecting only, not to reading replies: the
/// connector bounds the whole send itself, and a later send still works (on a fresh pool).
#[tokio::test]
async fn smtp_a_held_reply_times_out_at_the_client_timeout() {
    let faults = Faults { accept_then_timeout_rate: 1.0, hold: Duration::from_secs(10), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut smtp = smtp(&sandbox, Duration::from_millis(300), 2);
    let started = Instant::now();
    let outcome = &smtp.send(&[email(1, "ada@example.org")]).await.unwrap()[0];
    let elapsed = started.elapsed();
    assert!(matches!(outcome, SendOutcome::Retryable { .. }), "{outcome:?}");
    assert!(elapsed < Duration::from_secs(3), "the send took {elapsed:?} with a 300 ms timeout");
    // The server answers again: the next send is not confused by the connection cut mid-reply.
    sandbox.state.set_faults(Faults::default());
    let outcome = &smtp.send(&[email(2, "bob@example.org")]).await.unwrap()[0];
    assert!(matches!(outcome, SendOutcome::Delivered { .. }), "{outcome:?}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_bad_token_faults_are_bad_addresses() {
    let sandbox = sandbox(Faults { bad_token_rate: 1.0, ..Faults::default() }).await;
    let mut smtp = smtp(&sandbox, Duration::from_secs(5), 4);
    let jobs: Vec<DeliveryJob> = (0..5).map(|n| email(n, &format!("user{n}@example.org"))).collect();
    for outcome in smtp.send(&jobs).await.unwrap() {
        assert!(matches!(&outcome, SendOutcome::BadAddress { reason } if reason.contains("550")), "{outcome:?}");
    }
    assert_eq!(stats(&sandbox), StatsView { requests: 5, accepted: 0, rejected: 5, duplicates: 0 });
    sandbox.shutdown().await;
}

#[tokio::test]
async fn smtp_carries_thousands_of_messages_through_a_pool() {
    let sandbox = sandbox(Faults::default()).await;
    let mut smtp = smtp(&sandbox, Duration::from_secs(10), 8);
    let jobs: Vec<DeliveryJob> = (0..2_000).map(|n| email(n, &format!("user{n}@example.org"))).collect();
    let started = Instant::now();
    let outcomes = smtp.send(&jobs).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!("2000 messages over 8 connections in {elapsed:?}");
    let delivered = outcomes.iter().filter(|o| matches!(o, SendOutcome::Delivered { .. })).count();
    assert_eq!(delivered, 2_000, "{:?}", outcomes.iter().find(|o| !matches!(o, SendOutcome::Delivered { .. })));
    assert_eq!(stats(&sandbox), StatsView { requests: 2_000, accepted: 2_000, rejected: 0, duplicates: 0 });
    // The inbox keeps only the latest messages.
    let inbox = sandbox.smtp_inbox();
    assert_eq!(inbox.len(), INBOX_SIZE);
    sandbox.shutdown().await;
}

/// Reads replies until one whose last line (`NNN ` rather than `NNN-`) starts with `code`.
async fn read_until(stream: &mut TcpStream, seen: &mut String, code: &str) {
    let mut buf = [0u8; 4096];
    while !seen.lines().any(|line| line.starts_with(&format!("{code} "))) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed; replies so far: {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
}

#[tokio::test]
async fn smtp_answers_pipelined_commands_and_a_terminator_split_across_writes() {
    let sandbox = sandbox(Faults::default()).await;
    let mut stream = TcpStream::connect(sandbox.smtp_addr.unwrap()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut replies = String::new();
    read_until(&mut stream, &mut replies, "220").await;
    // One write: the whole envelope, as a pipelining client sends it.
    stream
        .write_all(b"EHLO client.example\r\nMAIL FROM:<a@herald.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await
        .unwrap();
    read_until(&mut stream, &mut replies, "354").await;
    let codes: Vec<&str> = replies.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["220", "250", "250", "250", "250", "250", "250", "250", "250", "354"], "{replies}");
    assert!(replies.contains("250-PIPELINING\r\n"));
    // The data, its terminator split over three writes.
    let mut replies = String::new();
    for part in [&b"X-Herald-Delivery-Id: d-1\r\nSubject: s\r\n\r\n..dot\r\n"[..], b"\r\n.", b"\r\nQUIT\r\n"] {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read_until(&mut stream, &mut replies, "221").await;
    assert!(replies.starts_with("250 2.0.0"), "{replies}");
    let inbox = sandbox.smtp_inbox();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].header(DELIVERY_ID_HEADER), Some("d-1"));
    assert_eq!(stats(&sandbox), StatsView { requests: 1, accepted: 1, rejected: 0, duplicates: 0 });
    sandbox.shutdown().await;
}
