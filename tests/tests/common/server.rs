//! One `herald serve` process on a temporary data directory.
//!
//! The data directory outlives the process: [`Herald::kill`] and [`Herald::terminate`] stop it,
//! [`Herald::serve`] starts it again on the same directory (on a new port). Dropping a [`Herald`]
//! SIGKILLs a running server; if the test is panicking the directory is kept and its path and the
//! tail of the server log are printed.

use super::backend::Backend;
use super::binary::herald_bin;
use super::client::Api;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a start (including recovery after SIGKILL) may take before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a SIGTERM drain may take before the test fails.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A herald data directory and, while it runs, the server process on it.
pub struct Herald {
    dir: TempDir,
    data_dir: PathBuf,
    config: Option<PathBuf>,
    admin_key: String,
    running: Option<Running>,
    url: String,
    starts: u32,
    logs: Vec<PathBuf>,
    /// `--topics` and `--state` of every command (`embedded` for both unless a cluster is used).
    topics: String,
    state: String,
}

struct Running {
    child: Child,
    /// Everything the server printed on stdout after its `listening on` line.
    stdout_rest: JoinHandle<String>,
}

/// How a server ended after SIGTERM.
pub struct Exit {
    pub status: ExitStatus,
    /// Stdout after the `listening on` line: the contract says there is none.
    pub stdout_after_ready: String,
}

impl Herald {
    /// A fresh data directory (with the TOML `config`, if any) and an admin key, not yet serving.
    pub fn new(config: Option<&str>) -> Self {
        Self::new_on(&Backend::embedded(), config)
    }

    /// [`Herald::new`] on `backend` (on ScyllaDB, `herald migrate` creates its keyspace first).
    pub fn new_on(backend: &Backend, config: Option<&str>) -> Self {
        let (topics, state) = backend.urls();
        let dir = tempfile::Builder::new().prefix("herald-test-").tempdir().expect("create a temp dir");
        let data_dir = dir.path().join("data");
        let config = config.map(|text| {
            let path = dir.path().join("herald.toml");
            fs::write(&path, text).expect("write the config file");
            path
        });
        let mut herald = Self {
            dir,
            data_dir,
            config,
            admin_key: String::new(),
            running: None,
            url: String::new(),
            starts: 0,
            logs: Vec::new(),
            topics,
            state,
        };
        if backend.uses_scylla() {
            let out = herald.command(&["migrate"]);
            assert!(out.status.success(), "herald migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        herald.admin_key = herald.create_key(&["admin"], "tests");
        herald
    }

    /// [`Herald::new`] then [`Herald::serve`].
    pub fn start(config: Option<&str>) -> Self {
        Self::start_on(&Backend::embedded(), config)
    }

    /// [`Herald::new_on`] then [`Herald::serve`].
    pub fn start_on(backend: &Backend, config: Option<&str>) -> Self {
        let mut herald = Self::new_on(backend, config);
        herald.serve();
        herald
    }

    /// The configuration a process of the test's own opening this server's backends must use
    /// (`config` with this server's `[backends]`).
    pub fn backends_config(&self, mut config: herald::config::Config) -> herald::config::Config {
        config.backends.topics = self.topics.clone();
        config.backends.state = self.state.clone();
        config
    }

    /// The `--topics` URL of this server (`embedded`, or `fluvio://…?prefix=…`).
    pub fn topics_url(&self) -> &str {
        &self.topics
    }

    /// Sets this server's backends on a command.
    fn on_backends<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("HERALD_TOPICS", &self.topics).env("HERALD_STATE", &self.state)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The base URL of the running server (`http://127.0.0.1:PORT`); it changes on every start.
    pub fn url(&self) -> &str {
        assert!(self.running.is_some(), "the server is not running");
        &self.url
    }

    /// The API of the running server with the admin key.
    pub fn api(&self) -> Api {
        Api::new(self.url(), Some(&self.admin_key))
    }

    /// `herald keys create --data-dir DIR --scope S… --client NAME` as a raw command result.
    pub fn keys_create(&self, scopes: &[&str], client: &str) -> Output {
        let mut cmd = Command::new(herald_bin());
        self.on_backends(&mut cmd);
        cmd.args(["keys", "create", "--data-dir"]).arg(&self.data_dir);
        for scope in scopes {
            cmd.args(["--scope", scope]);
        }
        cmd.args(["--client", client]).stdin(Stdio::null());
        cmd.output().expect("run `herald keys create`")
    }

    /// `herald ARGS… --data-dir DIR [--config FILE]`, a CLI command on this data directory (the
    /// server must not be running), as a raw command result.
    pub fn command(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(herald_bin());
        self.on_backends(&mut cmd);
        cmd.args(args).arg("--data-dir").arg(&self.data_dir);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run `herald {args:?}`: {e}"))
    }

    /// Replaces the configuration the next [`Herald::serve`] and [`Herald::command`] use.
    pub fn set_config(&mut self, text: &str) {
        let path = self.dir.path().join("herald.toml");
        fs::write(&path, text).expect("write the config file");
        self.config = Some(path);
    }

    /// Creates a key with the CLI (the server must not be running) and returns it.
    pub fn create_key(&self, scopes: &[&str], client: &str) -> String {
        let out = self.keys_create(scopes, client);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`herald keys create --scope {scopes:?} --client {client}` failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let key = stdout.trim();
        assert!(
            !key.is_empty() && key.lines().count() == 1 && !key.contains(char::is_whitespace),
            "`herald keys create` must print the key alone on stdout, printed {stdout:?}"
        );
        key.to_string()
    }

    /// Starts `herald serve` on the data directory and waits for its `listening on` line.
    pub fn serve(&mut self) {
        self.serve_on("127.0.0.1:0");
    }

    /// [`Herald::serve`] on `listen` (for a test that must know the address before the start,
    /// such as one whose configuration points callbacks at it).
    pub fn serve_on(&mut self, listen: &str) {
        assert!(self.running.is_none(), "the server is already running");
        self.starts += 1;
        let log_path = self.dir.path().join(format!("serve-{}.log", self.starts));
        let log = fs::File::create(&log_path).expect("create the server log");
        let mut cmd = Command::new(herald_bin());
        self.on_backends(&mut cmd);
        cmd.arg("serve").arg("--data-dir").arg(&self.data_dir).args(["--listen", listen]);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", herald_bin().display()));
        self.logs.push(log_path);

        let stdout = child.stdout.take().expect("stdout is piped");
        let (first_line, first_line_rx) = mpsc::channel();
        let stdout_rest = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = first_line.send(line);
            // Keep draining so the server never blocks on (or dies of) a full or closed pipe.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            String::from_utf8_lossy(&rest).into_owned()
        });

        let started = Instant::now();
        let line = match first_line_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "herald serve (start #{}) printed no `listening on` line within {STARTUP_TIMEOUT:?}\n{}",
                    self.starts,
                    self.log_tail(40)
                );
            }
        };
        let url = line.trim_end().strip_prefix("listening on ").map(str::to_string);
        let Some(url) = url.filter(|u| valid_url(u)) else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            panic!(
                "herald serve (start #{}) must print `listening on http://127.0.0.1:PORT` on stdout once ready; \
                 it printed {line:?} and the process ended with {status}\n{}",
                self.starts,
                self.log_tail(40)
            );
        };
        eprintln!("herald start #{} ready at {url} after {:?}", self.starts, started.elapsed());
        self.url = url;
        self.running = Some(Running { child, stdout_rest });
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.running.as_ref().expect("the server is not running").child.id()
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    pub fn kill(&mut self) {
        let mut running = self.running.take().expect("kill: the server is not running");
        running.child.kill().expect("SIGKILL the server");
        running.child.wait().expect("reap the killed server");
        let _ = running.stdout_rest.join();
    }

    /// SIGTERM, then wait up to [`DRAIN_TIMEOUT`] for the drain; a server still running then is
    /// SIGKILLed and the test fails.
    pub fn terminate(&mut self) -> Exit {
        let mut running = self.running.take().expect("terminate: the server is not running");
        let pid = running.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let status = loop {
            if let Some(status) = running.child.try_wait().expect("poll the server") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = running.child.kill();
                let _ = running.child.wait();
                panic!("herald did not exit within {DRAIN_TIMEOUT:?} of SIGTERM\n{}", self.log_tail(40));
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout_after_ready = running.stdout_rest.join().unwrap_or_default();
        Exit { status, stdout_after_ready }
    }

    /// SIGTERM and assert the contract of a clean stop: exit 0, nothing more on stdout.
    pub fn stop(&mut self) {
        let exit = self.terminate();
        assert!(exit.status.success(), "herald must exit 0 after SIGTERM, got {}\n{}", exit.status, self.log_tail(40));
        assert!(
            exit.stdout_after_ready.is_empty(),
            "herald must print exactly one line on stdout, it also printed {:?}",
            exit.stdout_after_ready
        );
    }

    /// The last `lines` lines of the latest server log (stderr), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = self.logs.last() else { return "(no server log)".to_string() };
        let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- last {lines} lines of {} ---\n{tail}", path.display())
    }
}

fn valid_url(url: &str) -> bool {
    url.strip_prefix("http://127.0.0.1:").and_then(|port| port.parse::<u16>().ok()).is_some_and(|p| p != 0)
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        if thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("test failed: data directory and server logs kept in {}", self.dir.path().display());
            eprintln!("{}", self.log_tail(30));
        }
    }
}
