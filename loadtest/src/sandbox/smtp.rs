//! An SMTP server (RFC 5321) as the sandbox serves it, on its own address, for Herald's SMTP
//! connector (lettre, pooled, cleartext, no authentication).
//!
//! Spoken: greeting `220`; `EHLO` (`250` with `PIPELINING`, `8BITMIME`, `SMTPUTF8`,
//! `ENHANCEDSTATUSCODES`, `SIZE`) or `HELO`; `MAIL FROM` (a `SIZE=` above the limit is `552`),
//! `RCPT TO` (up to [`MAX_RECIPIENTS`]), `DATA` with dot-unstuffing, ended by `CRLF.CRLF` however
//! the reads split it; `RSET`, `NOOP`, `VRFY` (`252`), `HELP`, `QUIT` (`221`). A command out of
//! sequence is `503`, an unknown one `500`, a known one not offered (`STARTTLS`, `AUTH`, `BDAT`,
//! ...) `502`, a command line over 512 octets `500`, a message over the size limit `552`.
//! Pipelined commands are answered in order, the replies of one read flushed together.
//!
//! Per message (transaction): `requests` counts each `MAIL FROM`; `accepted` each `250` to the
//! data, with `duplicates` keyed by the message's `X-Herald-Delivery-Id` header; `rejected` each
//! transaction refused (once, whatever the reason). Faults ([`Faults::draw`], once per message):
//! `fail_rate` is a temporary failure, one of `421 4.7.0` to `MAIL FROM` then closing the
//! connection, `451 4.3.0` at the end of the data, or a hold of `faults.hold` after the data and
//! a dropped connection; `accept_then_timeout_rate` counts the message accepted, then holds and
//! drops the connection without the `250`; `bad_token_rate` answers `550 5.1.1` to `RCPT TO`;
//! `latency_ms` delays the reply to the data. Magic recipients, by local part: `unknown@…` is
//! `550 5.1.1` (a bad address), `full@…` is `452 4.2.2` (mailbox full, temporary).
//!
//! The headers of the last [`INBOX_SIZE`] accepted messages are kept in the [`Inbox`].
//!
//! Written on tokio rather than with an SMTP crate: `mailin` decides each reply in a synchronous
//! `Handler` (and `mailin-embedded` is its own blocking server), where the sandbox needs to hold
//! a reply or drop the connection mid-transaction, and the I/O layer (reading, pipelining, the
//! split terminator, size limits) would still be ours; `samotop` is built on async-std, not
//! tokio. The protocol is a small state machine, [`Session`], with no
//! I/O, tested on its own.

use super::{Fate, Faults, State};
use bytes::BytesMut;
use herald_schemas::channel::DELIVERY_ID_HEADER;
use mail_parser::MessageParser;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The host name the server gives in its replies.
pub const HOSTNAME: &str = "sandbox.herald.test";
/// The largest message accepted (advertised as `SIZE`).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// The most recipients of one message.
pub const MAX_RECIPIENTS: usize = 100;
/// Accepted messages whose headers the [`Inbox`] keeps.
pub const INBOX_SIZE: usize = 1024;
/// A command line's limit, CRLF included (RFC 5321 §4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;
/// Unread input past which a connection that sends no line end is closed.
const MAX_PENDING_LINE: usize = 64 * 1024;
/// A connection silent this long is closed (`421`), as servers do.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The protocol's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: MAX_MESSAGE_BYTES, max_recipients: MAX_RECIPIENTS }
    }
}

/// What the connection must do next, as the protocol says.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write this reply (CRLF-terminated, perhaps several lines).
    Reply(String),
    /// Write this reply, then close the connection.
    Close(String),
    /// A well-formed `MAIL FROM` in sequence: accept it with [`Session::start_mail`] and `250`,
    /// or refuse it.
    Mail { from: String },
    /// A well-formed `RCPT TO` in sequence: accept it with [`Session::add_recipient`] and `250`,
    /// or refuse it.
    Recipient { to: String },
    /// A complete message, dot-unstuffed, without the terminator; the transaction is over and
    /// the caller answers it.
    Message(Message),
    /// The data of a message exceeded the size limit and was discarded (answer `552`).
    TooBig,
}

/// One message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

/// Where the connection is in the protocol.
#[derive(Debug)]
enum Mode {
    Command,
    /// Between `354` and the terminator; `size` counts octets, discarded past the limit.
    Data {
        data: Vec<u8>,
        size: usize,
    },
}

/// The open transaction: its sender and the recipients accepted so far.
#[derive(Debug)]
struct Transaction {
    from: String,
    recipients: Vec<String>,
}

/// The SMTP protocol state of one connection, without I/O: bytes in, [`Event`]s out.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    greeted: bool,
    transaction: Option<Transaction>,
    mode: Mode,
}

fn reply(text: &str) -> Event {
    Event::Reply(format!("{text}\r\n"))
}

/// The `<path>` of `FROM:<path> params` / `TO:<path> params`, with the parameters.
fn path_argument<'a>(argument: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let prefix = argument.get(..keyword.len())?;
    if !prefix.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((&rest[..end], rest[end + 1..].trim()))
}

impl Session {
    pub fn new(limits: Limits) -> Session {
        Session { limits, greeted: false, transaction: None, mode: Mode::Command }
    }

    /// Opens the transaction of an accepted `MAIL FROM`.
    pub fn start_mail(&mut self, from: String) {
        self.transaction = Some(Transaction { from, recipients: Vec::new() });
    }

    /// Adds an accepted recipient to the open transaction.
    pub fn add_recipient(&mut self, to: String) {
        if let Some(transaction) = &mut self.transaction {
            transaction.recipients.push(to);
        }
    }

    /// The next event from the buffered input, consuming what it used; `None` when a whole line
    /// has not arrived yet.
    pub fn next_event(&mut self, input: &mut BytesMut) -> Option<Event> {
        loop {
            let Some(newline) = input.iter().position(|&b| b == b'\n') else {
                if matches!(self.mode, Mode::Command) && input.len() > MAX_PENDING_LINE {
                    input.clear();
                    return Some(Event::Close("500 5.5.6 Line too long\r\n".into()));
                }
                return None;
            };
            let line = input.split_to(newline + 1);
            let event = match &mut self.mode {
                Mode::Command => Some(self.command(&line)),
                Mode::Data { .. } => self.data_line(&line),
            };
            if event.is_some() {
                return event;
            }
        }
    }

    /// One data line (with its line end): appended, or the end of the message.
    fn data_line(&mut self, line: &[u8]) -> Option<Event> {
        let Mode::Data { data, size } = &mut self.mode else {
            return None;
        };
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"." {
            let data = std::mem::take(data);
            let too_big = *size > self.limits.max_message_bytes;
            self.mode = Mode::Command;
            let transaction = self.transaction.take()?;
            if too_big {
                return Some(Event::TooBig);
            }
            return Some(Event::Message(Message { from: transaction.from, recipients: transaction.recipients, data }));
        }
        // Dot-unstuffing (RFC 5321 §4.5.2): a leading dot was doubled by the client.
        let unstuffed = line.strip_prefix(b".").unwrap_or(line);
        *size += unstuffed.len();
        if *size <= self.limits.max_message_bytes {
            data.extend_from_slice(unstuffed);
        }
        None
    }

    fn command(&mut self, line: &[u8]) -> Event {
        if line.len() > MAX_COMMAND_LINE {
            return reply("500 5.5.6 Line too long");
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return reply("500 5.5.2 Syntax error, command unrecognized");
        };
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
        let argument = argument.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if argument.is_empty() => reply("501 5.5.4 Syntax: EHLO hostname"),
            "EHLO" => {
                self.greet();
                Event::Reply(format!(
                    "250-{HOSTNAME} greets {argument}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250 SIZE {}\r\n",
                    self.limits.max_message_bytes
                ))
            }
            "HELO" => {
                self.greet();
                Event::Reply(format!("250 {HOSTNAME} greets {argument}\r\n"))
            }
            "MAIL" => self.mail(argument),
            "RCPT" => self.recipient(argument),
            "DATA" if !argument.is_empty() => reply("501 5.5.4 Syntax: DATA"),
            "DATA" => match &self.transaction {
                None => reply("503 5.5.1 Bad sequence of commands: MAIL first"),
                Some(t) if t.recipients.is_empty() => reply("503 5.5.1 Bad sequence of commands: RCPT first"),
                Some(_) => {
                    self.mode = Mode::Data { data: Vec::new(), size: 0 };
                    reply("354 End data with <CR><LF>.<CR><LF>")
                }
            },
            "RSET" => {
                self.transaction = None;
                reply("250 2.0.0 OK")
            }
            "NOOP" => reply("250 2.0.0 OK"),
            "VRFY" => reply("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"),
            "HELP" => reply("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"),
            "QUIT" => Event::Close(format!("221 2.0.0 {HOSTNAME} closing connection\r\n")),
            "EXPN" | "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" => reply("502 5.5.1 Command not implemented"),
            _ => reply("500 5.5.2 Syntax error, command unrecognized"),
        }
    }

    fn greet(&mut self) {
        self.greeted = true;
        self.transaction = None;
    }

    fn mail(&mut self, argument: &str) -> Event {
        if !self.greeted {
            return reply("503 5.5.1 Bad sequence of commands: EHLO first");
        }
        if self.transaction.is_some() {
            return reply("503 5.5.1 Bad sequence of commands: nested MAIL");
        }
        let Some((from, parameters)) = path_argument(argument, "FROM:") else {
            return reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        for parameter in parameters.split_whitespace() {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<usize>() {
                    Ok(size) if size > self.limits.max_message_bytes => {
                        return reply("552 5.3.4 Message size exceeds fixed maximum message size");
                    }
                    Ok(_) => {}
                    Err(_) => return reply("501 5.5.4 Invalid SIZE parameter"),
                },
                "BODY" | "SMTPUTF8" => {}
                _ => return reply("555 5.5.4 Unsupported MAIL FROM parameter"),
            }
        }
        Event::Mail { from: from.to_string() }
    }

    fn recipient(&mut self, argument: &str) -> Event {
        let Some(transaction) = &self.transaction else {
            return reply("503 5.5.1 Bad sequence of commands: MAIL first");
        };
        let Some((to, _parameters)) = path_argument(argument, "TO:") else {
            return reply("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if to.is_empty() {
            return reply("501 5.1.3 Bad recipient address syntax");
        }
        if transaction.recipients.len() >= self.limits.max_recipients {
            return reply("452 4.5.3 Too many recipients");
        }
        Event::Recipient { to: to.to_string() }
    }
}

/// One accepted message as the inbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub from: String,
    pub recipients: Vec<String>,
    /// The message's header fields in order, unfolded, as `mail-parser` reads them (so a
    /// `Message-ID` comes without its angle brackets).
    pub headers: Vec<(String, String)>,
}

impl ReceivedMail {
    /// The first header field of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The last [`INBOX_SIZE`] accepted messages, oldest first.
#[derive(Debug, Default)]
pub struct Inbox {
    recent: Mutex<VecDeque<ReceivedMail>>,
}

impl Inbox {
    fn push(&self, mail: ReceivedMail) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == INBOX_SIZE {
            recent.pop_front();
        }
        recent.push_back(mail);
    }

    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// An SMTP server serving until shut down (or dropped: its task is then detached and ends with
/// the runtime).
pub struct SmtpServer {
    pub local_addr: SocketAddr,
    pub inbox: Arc<Inbox>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    /// Binds `listen` (port 0 for any free port) and serves in the background.
    pub async fn start(listen: SocketAddr, state: Arc<State>) -> std::io::Result<SmtpServer> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let inbox = Arc::new(Inbox::default());
        let task = tokio::spawn(accept_loop(listener, state, Arc::clone(&inbox)));
        tracing::info!(%local_addr, "sandbox SMTP server listening");
        Ok(SmtpServer { local_addr, inbox, task })
    }

    /// Stops accepting and cuts every open connection.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, inbox: Arc<Inbox>) {
    // Connections live in this set: aborting the loop drops it, which aborts them all.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection { state: Arc::clone(&state), inbox: Arc::clone(&inbox) };
                connections.spawn(async move {
                    if let Err(error) = connection.serve(stream).await {
                        tracing::debug!(%error, "sandbox SMTP connection ended");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "sandbox SMTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: the [`Session`] plus the sandbox's decisions.
struct Connection {
    state: Arc<State>,
    inbox: Arc<Inbox>,
}

/// What the connection does after answering an event.
enum Next {
    Continue,
    /// Flush the replies, then close.
    Close,
    /// Drop the connection, unanswered.
    Drop,
}

/// The sandbox's decisions about the open transaction, made at `MAIL FROM`.
struct Attempt {
    faults: Faults,
    fate: Fate,
    /// Counted as rejected already (at `RCPT TO`): a transaction is rejected once.
    refused: bool,
}

impl Connection {
    async fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut session = Session::new(Limits::default());
        let mut input = BytesMut::with_capacity(16 * 1024);
        let mut output = Vec::with_capacity(1024);
        let mut attempt = Attempt { faults: Faults::default(), fate: Fate::Accept, refused: false };
        stream.write_all(format!("220 {HOSTNAME} ESMTP Herald provider sandbox\r\n").as_bytes()).await?;
        loop {
            while let Some(event) = session.next_event(&mut input) {
                if let Event::Message(_) = event {
                    // The reply to the data may be held: what precedes it goes out first.
                    stream.write_all(&output).await?;
                    output.clear();
                }
                match self.answer(event, &mut session, &mut attempt, &mut output).await {
                    Next::Continue => {}
                    Next::Close => {
                        stream.write_all(&output).await?;
                        return stream.shutdown().await;
                    }
                    Next::Drop => return Ok(()),
                }
            }
            // Everything the client pipelined so far is answered: flush before waiting for more.
            if !output.is_empty() {
                stream.write_all(&output).await?;
                output.clear();
            }
            quick_ack(&stream);
            match tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut input)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error),
                Err(_idle) => {
                    stream.write_all(b"421 4.4.2 Idle timeout, closing connection\r\n").await?;
                    return Ok(());
                }
            }
            if input.capacity() - input.len() < 4096 {
                input.reserve(16 * 1024);
            }
        }
    }

    /// Answers one event into `output`.
    async fn answer(&self, event: Event, session: &mut Session, attempt: &mut Attempt, output: &mut Vec<u8>) -> Next {
        match event {
            Event::Reply(text) => {
                output.extend_from_slice(text.as_bytes());
                Next::Continue
            }
            Event::Close(text) => {
                output.extend_from_slice(text.as_bytes());
                Next::Close
            }
            Event::Mail { from } => {
                self.stats().request();
                let faults = self.state.faults();
                let fate = faults.draw(&mut rand::rng());
                *attempt = Attempt { faults, fate, refused: false };
                if fate == Fate::Throttled {
                    self.stats().rejected();
                    output.extend_from_slice(b"421 4.7.0 Too many messages, try again later; closing\r\n");
                    return Next::Close;
                }
                session.start_mail(from);
                output.extend_from_slice(b"250 2.1.0 OK\r\n");
                Next::Continue
            }
            Event::Recipient { to } => {
                match recipient_refusal(&to, attempt.fate) {
                    Some(text) => {
                        if !attempt.refused {
                            self.stats().rejected();
                            attempt.refused = true;
                        }
                        output.extend_from_slice(text);
                    }
                    None => {
                        session.add_recipient(to);
                        output.extend_from_slice(b"250 2.1.5 OK\r\n");
                    }
                }
                Next::Continue
            }
            Event::TooBig => {
                self.stats().rejected();
                output.extend_from_slice(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n");
                Next::Continue
            }
            Event::Message(message) => match self.end_of_data(message, attempt.fate, &attempt.faults).await {
                Some(text) => {
                    output.extend_from_slice(text);
                    Next::Continue
                }
                None => Next::Drop,
            },
        }
    }

    fn stats(&self) -> &super::ProviderStats {
        self.state.stats("smtp")
    }

    /// The reply to a complete message, or `None` to drop the connection unanswered.
    async fn end_of_data(&self, message: Message, fate: Fate, faults: &Faults) -> Option<&'static [u8]> {
        faults.delay().await;
        match fate {
            Fate::Unavailable => {
                self.stats().rejected();
                Some(b"451 4.3.0 Temporary server error, try again later\r\n")
            }
            Fate::Timeout => {
                self.stats().rejected();
                tokio::time::sleep(faults.hold).await;
                None
            }
            Fate::Accept | Fate::AcceptThenTimeout | Fate::Throttled | Fate::BadToken => {
                let headers = header_fields(&message.data);
                let delivery_id = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(DELIVERY_ID_HEADER));
                self.stats().accepted(delivery_id.map(|(_, v)| v.as_str()));
                self.inbox.push(ReceivedMail { from: message.from, recipients: message.recipients, headers });
                if fate == Fate::AcceptThenTimeout {
                    tokio::time::sleep(faults.hold).await;
                    return None;
                }
                Some(b"250 2.0.0 OK: queued\r\n")
            }
        }
    }
}

/// The refusal of a recipient: a magic local part, or the bad-address fault.
fn recipient_refusal(to: &str, fate: Fate) -> Option<&'static [u8]> {
    let local = to.rsplit_once('@').map_or(to, |(local, _)| local);
    if local.eq_ignore_ascii_case("unknown") || fate == Fate::BadToken {
        Some(b"550 5.1.1 Mailbox unknown\r\n")
    } else if local.eq_ignore_ascii_case("full") {
        Some(b"452 4.2.2 Mailbox full\r\n")
    } else {
        None
    }
}

/// Acknowledges the next segment at once. lettre writes a message's data and its terminator in
/// two writes without `TCP_NODELAY`, so Nagle holds the terminator until the data is
/// acknowledged, which delayed ACKs put off by up to 40 ms: 25 messages a second per
/// connection. Linux clears the flag as it sees fit, so it is set again before every read.
fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_quickack(true) {
        tracing::debug!(%error, "TCP_QUICKACK not set");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// The header fields of a message, unfolded (`mail-parser`).
fn header_fields(data: &[u8]) -> Vec<(String, String)> {
    let parser = MessageParser::new().default_header_text();
    let Some(message) = parser.parse_headers(data) else {
        return Vec::new();
    };
    message
        .headers()
        .iter()
        .map(|h| {
            // A field mail-parser reads as structured (List-Unsubscribe as URLs, say): its raw value.
            let value = match h.value().as_text() {
                Some(text) => text.trim().to_string(),
                None => {
                    let raw = data.get(h.offset_start() as usize..h.offset_end() as usize).unwrap_or_default();
                    String::from_utf8_lossy(raw).split_whitespace().collect::<Vec<_>>().join(" ")
                }
            };
            (h.name().to_string(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a session that accepts every sender and recipient over `chunks` of input (each fed
    /// as one read); returns the replies and the messages.
    fn run(limits: Limits, chunks: &[&[u8]]) -> (Vec<String>, Vec<Message>) {
        let mut session = Session::new(limits);
        let mut input = BytesMut::new();
        let mut replies = Vec::new();
        let mut messages = Vec::new();
        for chunk in chunks {
            input.extend_from_slice(chunk);
            while let Some(event) = session.next_event(&mut input) {
                match event {
                    Event::Reply(text) | Event::Close(text) => replies.push(text),
                    Event::Mail { from } => {
                        session.start_mail(from);
                        replies.push("250 mail\r\n".into());
                    }
                    Event::Recipient { to } => {
                        session.add_recipient(to);
                        replies.push("250 rcpt\r\n".into());
                    }
                    Event::Message(message) => {
                        messages.push(message);
                        replies.push("250 data\r\n".into());
                    }
                    Event::TooBig => replies.push("552\r\n".into()),
                }
            }
        }
        (replies, messages)
    }

    fn codes(replies: &[String]) -> Vec<&str> {
        replies.iter().map(|r| &r[..3]).collect()
    }

    const ENVELOPE: &[u8] = b"EHLO client.example\r\nMAIL FROM:<a@herald.example>\r\nRCPT TO:<b@example.org>\r\n\
        RCPT TO:<c@example.org>\r\nDATA\r\n";

    #[test]
    fn a_pipelined_transaction_is_answered_in_order_and_unstuffed() {
        let body = b"Subject: hi\r\n\r\n..leading dot\r\nnot the end: .\r\n...\r\n.\r\nQUIT\r\n";
        let (replies, messages) = run(Limits::default(), &[&[ENVELOPE, body].concat()]);
        assert_eq!(codes(&replies), ["250", "250", "250", "250", "354", "250", "221"]);
        assert!(replies[0].contains("250-PIPELINING\r\n") && replies[0].contains("250 SIZE 10485760\r\n"));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].from, "a@herald.example");
        assert_eq!(messages[0].recipients, ["b@example.org", "c@example.org"]);
        assert_eq!(messages[0].data, b"Subject: hi\r\n\r\n.leading dot\r\nnot the end: .\r\n..\r\n");
    }

    #[test]
    fn a_terminator_split_across_reads_ends_the_message() {
        for split in ["hello\r\n.", "hello\r\n", "hello\r", "hello\r\n.\r"] {
            let whole = b"hello\r\n.\r\nNOOP\r\n";
            let (first, second) = whole.split_at(split.len());
            let (replies, messages) = run(Limits::default(), &[ENVELOPE, first, second]);
            assert_eq!(codes(&replies), ["250", "250", "250", "250", "354", "250", "250"], "{split:?}");
            assert_eq!(messages[0].data, b"hello\r\n", "{split:?}");
        }
        // One octet per read.
        let bytes = [ENVELOPE, b"a\r\n..b\r\n.\r\n"].concat();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let (_, messages) = run(Limits::default(), &chunks);
        assert_eq!(messages[0].data, b"a\r\n.b\r\n");
    }

    #[test]
    fn an_empty_message_ends_at_once() {
        let (replies, messages) = run(Limits::default(), &[ENVELOPE, b".\r\n"]);
        assert_eq!(codes(&replies).last(), Some(&"250"));
        assert_eq!(messages[0].data, b"");
    }

    #[test]
    fn commands_out_of_sequence_are_503() {
        let cases: [(&[u8], &[&str]); 6] = [
            (b"MAIL FROM:<a@x>\r\n", &["503"]),
            (b"HELO x\r\nRCPT TO:<b@y>\r\n", &["250", "503"]),
            (b"HELO x\r\nDATA\r\n", &["250", "503"]),
            (b"HELO x\r\nMAIL FROM:<a@x>\r\nDATA\r\n", &["250", "250", "503"]),
            (b"HELO x\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\n", &["250", "250", "503"]),
            (b"HELO x\r\nMAIL FROM:<a@x>\r\nRSET\r\nRCPT TO:<b@y>\r\n", &["250", "250", "250", "503"]),
        ];
        for (input, expected) in cases {
            let (replies, _) = run(Limits::default(), &[input]);
            assert_eq!(codes(&replies), expected, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn other_commands_and_errors_have_their_codes() {
        let long = format!("NOOP {}\r\n", "x".repeat(600));
        let input = [
            b"NOOP\r\nVRFY someone\r\nHELP\r\nFOO bar\r\nSTARTTLS\r\nEHLO\r\nEHLO x\r\n".as_slice(),
            b"MAIL FROM:a@x\r\nMAIL FROM:<a@x> SIZE=99999999999\r\nMAIL FROM:<a@x> XFOO=1\r\n",
            long.as_bytes(),
            b"DATA extra\r\nQUIT\r\n",
        ]
        .concat();
        let (replies, _) = run(Limits::default(), &[&input]);
        assert_eq!(
            codes(&replies),
            ["250", "252", "214", "500", "502", "501", "250", "501", "552", "555", "500", "501", "221"]
        );
        assert!(replies[10].contains("Line too long"), "{replies:?}");
    }

    #[test]
    fn a_line_that_never_ends_closes_the_connection() {
        let mut session = Session::new(Limits::default());
        let mut input = BytesMut::from(vec![b'x'; MAX_PENDING_LINE + 1].as_slice());
        assert!(matches!(session.next_event(&mut input), Some(Event::Close(text)) if text.starts_with("500")));
    }

    #[test]
    fn a_message_over_the_size_limit_is_552_and_the_session_goes_on() {
        let limits = Limits { max_message_bytes: 10, ..Limits::default() };
        let (replies, messages) =
            run(limits, &[ENVELOPE, b"0123456789abcdef\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"]);
        assert_eq!(codes(&replies), ["250", "250", "250", "250", "354", "552", "250", "250"]);
        assert!(messages.is_empty());
    }

    #[test]
    fn recipients_are_limited() {
        let limits = Limits { max_recipients: 1, ..Limits::default() };
        let (replies, _) = run(limits, &[ENVELOPE]);
        assert_eq!(codes(&replies), ["250", "250", "250", "452", "354"]);
    }

    #[test]
    fn header_fields_are_unfolded() {
        let fields = header_fields(b"X-Herald-Delivery-Id: n-1.abc\r\nSubject: a\r\n folded\r\n\r\nbody\r\n");
        assert_eq!(fields[0], ("X-Herald-Delivery-Id".to_string(), "n-1.abc".to_string()));
        assert_eq!(fields[1].1, "a folded");
    }
}
