//! SMTP bounces: a delivery status notification (RFC 3464, `multipart/report;
//! report-type=delivery-status`) mailed back to the envelope sender, read into [`Receipt`]s.
//!
//! - One receipt per per-recipient group of the `message/delivery-status` part (`Final-Recipient`,
//!   else `Original-Recipient`, is the address), all naming the delivery of the returned original
//!   message: its [`DELIVERY_ID_HEADER`], else the local part of its `Message-ID`
//!   `<delivery-id@domain>` (how the connector writes it). The original comes as a
//!   `message/rfc822` part or as `text/rfc822-headers`.
//! - `Action: failed` is a bounce. It is hard (the address is dead) for a permanent `5.x.x` status
//!   about the address or the mailbox (subjects 0, 1, 2 and 4: unknown user, bad domain, mailbox
//!   disabled, unroutable), except 5.2.2 (mailbox full) and 5.2.3 (message too big), which are
//!   about this message. A permanent failure about the mail system, the protocol, the content or
//!   policy (5.3, 5.5, 5.6, 5.7: spam refusal, sender not authorised) is soft: the mailbox may
//!   well exist, and deactivating it would punish the user for our fault. A `4.x.x` status on a
//!   failure (the MTA gave up retrying) is soft too.
//! - `Action: delivered` (and `expanded`, delivered to a list) is a delivery.
//! - `Action: delayed` and `relayed` give no receipt: they report no outcome (the MTA keeps
//!   trying, or handed the message to a system that sends no DSN), and a later DSN, or none
//!   for a delivery, tells the end.
//!
//! MIME and header syntax (folding, encodings, nesting) is `mail-parser`'s; this module only
//! reads the DSN fields, which are header fields in groups separated by blank lines.

use crate::receipts::{Receipt, ReceiptError, ReceiptStatus};
use herald_schemas::DeliveryId;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

const PROVIDER: &str = "smtp";

fn malformed(detail: impl Into<String>) -> ReceiptError {
    ReceiptError::Malformed { provider: PROVIDER, detail: detail.into() }
}

fn parser() -> MessageParser {
    MessageParser::new().with_mime_headers().with_message_ids().default_header_text()
}

/// The receipts of a bounce message, given as the raw bytes of the whole mail.
pub fn parse_bounce(raw: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    let parser = parser();
    let message = parser.parse(raw).ok_or_else(|| malformed("not a mail message"))?;
    let report = message.content_type().ok_or_else(|| malformed("no Content-Type"))?;
    let is_report = report.ctype().eq_ignore_ascii_case("multipart")
        && report.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
        && report.attribute("report-type").is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"));
    if !is_report {
        return Err(malformed("not a multipart/report; report-type=delivery-status"));
    }
    let status = message
        .parts
        .iter()
        .find(|part| {
            part.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct.subtype().is_some_and(|s| {
                        s.eq_ignore_ascii_case("delivery-status") || s.eq_ignore_ascii_case("global-delivery-status")
                    })
            })
        })
        .ok_or_else(|| malformed("no message/delivery-status part"))?;
    let delivery_id = original_delivery_id(&parser, &message)?;
    let groups = field_groups(&parser, status.contents());
    // The first group holds the per-message fields (Reporting-MTA, ...), the rest one recipient each.
    let recipients = groups.get(1..).unwrap_or_default();
    if recipients.is_empty() {
        return Err(malformed("the delivery-status part names no recipient"));
    }
    let mut receipts = Vec::with_capacity(recipients.len());
    for fields in recipients {
        if let Some(receipt) = recipient_receipt(fields, &delivery_id)? {
            receipts.push(receipt);
        }
    }
    Ok(receipts)
}

/// The delivery id of the returned original message.
fn original_delivery_id(parser: &MessageParser, message: &Message<'_>) -> Result<DeliveryId, ReceiptError> {
    for part in &message.parts {
        let headers_only;
        let original = match &part.body {
            PartType::Message(original) => original,
            PartType::Text(text)
                if part.content_type().is_some_and(|ct| {
                    ct.ctype().eq_ignore_ascii_case("text")
                        && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
                }) =>
            {
                match parser.parse_headers(text.as_bytes()) {
                    Some(headers) => {
                        headers_only = headers;
                        &headers_only
                    }
                    None => continue,
                }
            }
            _ => continue,
        };
        let header = original
            .headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(DELIVERY_ID_HEADER))
            .and_then(|h| h.value().as_text())
            .map(str::trim)
            .filter(|id| !id.is_empty());
        if let Some(id) = header {
            return Ok(DeliveryId(id.to_string()));
        }
        if let Some((id, _domain)) = original.message_id().and_then(|m| m.rsplit_once('@'))
            && !id.is_empty()
        {
            return Ok(DeliveryId(id.to_string()));
        }
    }
    Err(malformed(format!("the returned message has neither {DELIVERY_ID_HEADER} nor a Message-ID")))
}

/// The DSN body as groups of `(name, value)` fields; each blank-line separated block is parsed
/// as a header block (so folded lines are unfolded).
fn field_groups(parser: &MessageParser, body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let block = format!("{}\n\n", block.trim_start_matches('\n'));
            let headers = parser.parse_headers(block.as_bytes())?;
            let fields: Vec<(String, String)> = headers
                .headers()
                .iter()
                .filter_map(|h| Some((h.name().to_ascii_lowercase(), h.value().as_text()?.trim().to_string())))
                .collect();
            (!fields.is_empty()).then_some(fields)
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `rfc822; user@example.com` → `user@example.com`.
fn address_of(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, address)| address).trim()
}

fn recipient_receipt(fields: &[(String, String)], delivery_id: &DeliveryId) -> Result<Option<Receipt>, ReceiptError> {
    let address = field(fields, "final-recipient")
        .or_else(|| field(fields, "original-recipient"))
        .map(address_of)
        .ok_or_else(|| malformed("a recipient without Final-Recipient"))?;
    let action = field(fields, "action").ok_or_else(|| malformed(format!("{address}: no Action")))?;
    let status_code = field(fields, "status").ok_or_else(|| malformed(format!("{address}: no Status")))?;
    // `5.1.1`, perhaps followed by a comment: `5.1.1 (bad destination mailbox address)`.
    let status_code = status_code.split_whitespace().next().unwrap_or_default();
    let code: Vec<&str> = status_code.split('.').collect();
    let [class, subject, detail] = code[..] else {
        return Err(malformed(format!("{address}: Status {status_code:?} is not class.subject.detail")));
    };
    let status = match action.to_ascii_lowercase().as_str() {
        "delivered" | "expanded" => ReceiptStatus::Delivered,
        "failed" => ReceiptStatus::Bounced { hard: is_dead_address(class, subject, detail) },
        "delayed" | "relayed" => return Ok(None),
        other => return Err(malformed(format!("{address}: unknown Action {other:?}"))),
    };
    let reason = match field(fields, "diagnostic-code") {
        Some(diagnostic) => format!("{status_code} {diagnostic}"),
        None => status_code.to_string(),
    };
    Ok(Some(Receipt {
        provider: PROVIDER,
        delivery_id: delivery_id.clone(),
        status,
        address: Some(address.to_string()),
        provider_id: None,
        reason: Some(reason),
    }))
}

/// Whether a failure's status says the address itself is dead (RFC 3463 classes and subjects).
fn is_dead_address(class: &str, subject: &str, detail: &str) -> bool {
    class == "5" && matches!(subject, "0" | "1" | "2" | "4") && !(subject == "2" && matches!(detail, "2" | "3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postfix bounce: text explanation, the DSN, and the original's headers only.
    const POSTFIX: &str = "Return-Path: <>\r
Received: by mx.herald.example (Postfix) id 4Xk2Z1; Thu, 26 Nov 2026 14:20:01 +0000 (UTC)\r
Date: Thu, 26 Nov 2026 14:20:01 +0000 (UTC)\r
From: MAILER-DAEMON@mx.herald.example (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: bounces@herald.example\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"4Xk2Z1.1764166801/mx.herald.example\"\r
Message-Id: <20261126142001.4Xk2Z1@mx.herald.example>\r
\r
This is a MIME-encapsulated message.\r
\r
--4Xk2Z1.1764166801/mx.herald.example\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is the mail system at host mx.herald.example.\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients.\r
\r
<nobody@example.org>: host mx.example.org[203.0.113.5] said: 550 5.1.1\r
    <nobody@example.org>: Recipient address rejected: User unknown in virtual\r
    mailbox table (in reply to RCPT TO command)\r
\r
--4Xk2Z1.1764166801/mx.herald.example\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.herald.example\r
X-Postfix-Queue-ID: 4Xk2Z1\r
X-Postfix-Sender: rfc822; bounces@herald.example\r
Arrival-Date: Thu, 26 Nov 2026 14:20:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; nobody@example.org\r
Original-Recipient: rfc822;nobody@example.org\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mx.example.org\r
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address\r
    rejected: User unknown in virtual mailbox table\r
\r
Final-Recipient: rfc822; full@example.org\r
Action: failed\r
Status: 4.2.2\r
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r
\r
Final-Recipient: rfc822; slow@example.org\r
Action: delayed\r
Status: 4.4.1\r
\r
--4Xk2Z1.1764166801/mx.herald.example\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Return-Path: <bounces@herald.example>\r
From: Herald <noreply@herald.example>\r
To: nobody@example.org\r
Subject: Your code\r
Message-ID: <n-1.0123456789abcdef@herald.example>\r
X-Herald-Delivery-Id: n-1.0123456789abcdef\r
MIME-Version: 1.0\r
\r
--4Xk2Z1.1764166801/mx.herald.example--\r
";

    /// A Gmail bounce: an alternative text/HTML explanation, the DSN, and the whole original
    /// message (without the delivery id header, so the id comes from the Message-ID).
    const GMAIL: &str = "Delivered-To: bounces@herald.example\r
Return-Path: <>\r
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r
To: bounces@herald.example\r
Auto-Submitted: auto-replied\r
Subject: Delivery Status Notification (Failure)\r
Message-ID: <6745dd81.050a0220.1b2c3d.0042.GMR@mx.google.com>\r
Date: Thu, 26 Nov 2026 06:20:01 -0800 (PST)\r
MIME-Version: 1.0\r
Content-Type: multipart/report; boundary=\"000000000000a1b2c3\"; report-type=delivery-status\r
\r
--000000000000a1b2c3\r
Content-Type: multipart/related; boundary=\"000000000000a1b2d4\"\r
\r
--000000000000a1b2d4\r
Content-Type: multipart/alternative; boundary=\"000000000000a1b2e5\"\r
\r
--000000000000a1b2e5\r
Content-Type: text/plain; charset=\"UTF-8\"\r
\r
\r
** Address not found **\r
\r
Your message wasn't delivered to gone@gmail.com because the address couldn't be found, or is unable to receive mail.\r
\r
--000000000000a1b2e5\r
Content-Type: text/html; charset=\"UTF-8\"\r
\r
<html><body><h1>Address not found</h1></body></html>\r
--000000000000a1b2e5--\r
--000000000000a1b2d4--\r
--000000000000a1b2c3\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; googlemail.com\r
Received-From-MTA: dns; mail.herald.example\r
Arrival-Date: Thu, 26 Nov 2026 06:20:00 -0800 (PST)\r
X-Original-Message-ID: <n-7.fedcba9876543210@herald.example>\r
\r
Final-Recipient: rfc822; gone@gmail.com\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0:4864:20::1a, the server for the domain gmail.com.)\r
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try\r
 550-5.1.1 double-checking the recipient's email address for typos or\r
 550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser a1si2\r
Last-Attempt-Date: Thu, 26 Nov 2026 06:20:01 -0800 (PST)\r
\r
--000000000000a1b2c3\r
Content-Type: message/rfc822\r
\r
From: Herald <noreply@herald.example>\r
To: gone@gmail.com\r
Subject: Welcome\r
Date: Thu, 26 Nov 2026 14:19:59 +0000\r
Message-ID: <n-7.fedcba9876543210@herald.example>\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=utf-8\r
\r
Welcome aboard.\r
\r
--000000000000a1b2c3--\r
";

    #[test]
    fn a_postfix_bounce_gives_a_receipt_per_final_recipient() {
        let receipts = parse_bounce(POSTFIX.as_bytes()).unwrap();
        let id = DeliveryId("n-1.0123456789abcdef".into());
        assert_eq!(receipts.len(), 2, "the delayed recipient gives none: {receipts:?}");
        assert_eq!(receipts[0].provider, "smtp");
        assert_eq!(receipts[0].delivery_id, id);
        assert_eq!(receipts[0].status, ReceiptStatus::Bounced { hard: true });
        assert_eq!(receipts[0].address.as_deref(), Some("nobody@example.org"));
        let reason = receipts[0].reason.as_deref().unwrap();
        assert!(reason.starts_with("5.1.1 smtp; 550 5.1.1") && reason.contains("User unknown"), "{reason}");
        assert_eq!(receipts[1].delivery_id, id);
        assert_eq!(receipts[1].status, ReceiptStatus::Bounced { hard: false });
        assert_eq!(receipts[1].address.as_deref(), Some("full@example.org"));
    }

    #[test]
    fn a_gmail_bounce_takes_the_delivery_id_from_the_message_id() {
        let receipts = parse_bounce(GMAIL.as_bytes()).unwrap();
        assert_eq!(receipts.len(), 1);
        let receipt = &receipts[0];
        assert_eq!(receipt.delivery_id, DeliveryId("n-7.fedcba9876543210".into()));
        assert_eq!(receipt.status, ReceiptStatus::Bounced { hard: true });
        assert!(receipt.status.address_is_dead());
        assert_eq!(receipt.address.as_deref(), Some("gone@gmail.com"));
        // The folded diagnostic is unfolded.
        assert!(receipt.reason.as_deref().unwrap().contains("Please try 550-5.1.1 double-checking"), "{receipt:?}");
    }

    /// The Postfix fixture with its recipient groups replaced.
    fn postfix_with(recipients: &str) -> String {
        let start = POSTFIX.find("Final-Recipient: rfc822; nobody").unwrap();
        let end = POSTFIX.find("--4Xk2Z1.1764166801/mx.herald.example\r\nContent-Description: Undelivered").unwrap();
        format!("{}{recipients}\r\n\r\n{}", &POSTFIX[..start], &POSTFIX[end..])
    }

    #[test]
    fn status_and_action_decide_the_receipt() {
        let cases = [
            ("failed", "5.1.1", Some(ReceiptStatus::Bounced { hard: true })),
            ("failed", "5.1.10", Some(ReceiptStatus::Bounced { hard: true })),
            ("failed", "5.2.1", Some(ReceiptStatus::Bounced { hard: true })),
            ("failed", "5.4.4", Some(ReceiptStatus::Bounced { hard: true })),
            ("failed", "5.2.2", Some(ReceiptStatus::Bounced { hard: false })),
            ("failed", "5.7.1", Some(ReceiptStatus::Bounced { hard: false })),
            ("failed", "4.4.7", Some(ReceiptStatus::Bounced { hard: false })),
            ("Failed", "5.1.1 (bad destination mailbox address)", Some(ReceiptStatus::Bounced { hard: true })),
            ("delivered", "2.0.0", Some(ReceiptStatus::Delivered)),
            ("expanded", "2.0.0", Some(ReceiptStatus::Delivered)),
            ("delayed", "4.4.1", None),
            ("relayed", "2.0.0", None),
        ];
        for (action, status, expected) in cases {
            let raw = postfix_with(&format!(
                "Final-Recipient: rfc822; someone@example.org\r\nAction: {action}\r\nStatus: {status}"
            ));
            let receipts = parse_bounce(raw.as_bytes()).unwrap();
            assert_eq!(receipts.first().map(|r| r.status), expected, "{action} {status}");
        }
    }

    #[test]
    fn malformed_bounces_are_refused() {
        let not_a_report = "From: a@example.org\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nhello\r\n";
        let no_recipients = postfix_with("");
        let no_action = postfix_with("Final-Recipient: rfc822; a@example.org\r\nStatus: 5.1.1");
        let no_recipient = postfix_with("Action: failed\r\nStatus: 5.1.1");
        let bad_status = postfix_with("Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 550");
        let unknown_action = postfix_with("Final-Recipient: rfc822; a@example.org\r\nAction: lost\r\nStatus: 5.1.1");
        let no_original = POSTFIX
            .replace("Message-ID: <n-1.0123456789abcdef@herald.example>\r\n", "")
            .replace("X-Herald-Delivery-Id: n-1.0123456789abcdef\r\n", "");
        let no_dsn = POSTFIX.replace("Content-Type: message/delivery-status", "Content-Type: text/plain");
        let inputs = [
            ("empty", String::new()),
            ("not a report", not_a_report.to_string()),
            ("no recipients", no_recipients),
            ("no action", no_action),
            ("no recipient", no_recipient),
            ("bad status", bad_status),
            ("unknown action", unknown_action),
            ("no original", no_original),
            ("no dsn", no_dsn),
        ];
        for (name, raw) in inputs {
            let result = parse_bounce(raw.as_bytes());
            assert!(matches!(result, Err(ReceiptError::Malformed { provider: "smtp", .. })), "{name}: {result:?}");
        }
    }
}
