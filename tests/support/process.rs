//! The real `tally` binary as a child process: started on a free port with the test token, its
//! output kept in files in the test's scratch directory, killed (by its id) if a test panics
//! before stopping it.

use super::http::{self, RawResp};
use super::scrape::Scrape;
use super::{free_port, signing, TOKEN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a start (recovery included) may take before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How to start `tally serve`; [`Tally::launch`] gives the defaults (one worker, the test token,
/// output in `dir`).
#[derive(Debug)]
pub struct Launch {
    dir: PathBuf,
    env: Vec<(String, String)>,
    shell_prefix: Option<String>,
    port: Option<u16>,
}

impl Launch {
    /// Set environment variables (`TALLY_…`), in order; later ones win.
    pub fn env(mut self, pairs: &[(&str, &str)]) -> Launch {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Keep the journal and snapshots in the scratch directory (`storage.dir`).
    pub fn journal(self) -> Launch {
        let dir = self.dir.to_str().expect("UTF-8 scratch path").to_owned();
        self.env(&[
            ("TALLY_STORAGE__MEMORY_ONLY", "false"),
            ("TALLY_STORAGE__DIR", &dir),
        ])
    }

    /// Listen on `port` rather than a fresh free one (to restart on the same address).
    pub fn on_port(mut self, port: u16) -> Launch {
        self.port = Some(port);
        self
    }

    /// Run the binary through `sh -c "<prefix> exec tally serve"` (to ignore a signal, say).
    pub fn through_shell(mut self, prefix: &str) -> Launch {
        self.shell_prefix = Some(prefix.to_owned());
        self
    }

    /// Drop the memory-only default and set no storage at all, as a new user runs it: state
    /// goes to the default `data/` under the working directory (the scratch directory).
    pub fn durable_defaults(mut self) -> Launch {
        self.env.retain(|(k, _)| k != "TALLY_STORAGE__MEMORY_ONLY");
        self
    }

    /// Start it and wait until `/readyz` and then `/readyz/queries` answer 200.
    pub fn start(self) -> Tally {
        let tally = self.spawn();
        tally.wait_ready(READY_WITHIN);
        tally
    }

    /// Start it and return at once, waiting for nothing (to talk to it during a long start-up
    /// recovery; [`Tally::wait_for`] waits for a probe).
    pub fn spawn(self) -> Tally {
        let port = self.port.unwrap_or_else(free_port);
        let stdout = self.dir.join("tally.stdout.log");
        let stderr = self.dir.join("tally.stderr.log");
        let mut cmd = self.command(port);
        cmd.stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        Tally {
            child: Some(cmd.spawn().expect("tally starts")),
            endpoint: Endpoint { port },
            stdout,
            stderr,
        }
    }

    /// Run a start that is expected to fail: wait (up to `limit`) for the exit and return the
    /// status with stdout and stderr captured. Past the limit the process is killed and the
    /// test fails with its output.
    pub fn run_to_exit(self, limit: Duration) -> Output {
        let mut child = self
            .command(free_port())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally starts");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("waitable").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "tally did not exit within {limit:?}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        child.wait_with_output().expect("output")
    }

    /// The command: `tally serve` in the scratch directory, on `port`, with the test token and
    /// the environment asked for; output not yet directed.
    fn command(self, port: u16) -> Command {
        let bin = env!("CARGO_BIN_EXE_tally");
        let mut cmd = match &self.shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("{prefix} exec \"{bin}\" serve"));
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.arg("serve");
                c
            }
        };
        // The scratch directory is the working directory, so a default `data/` lands there.
        cmd.current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .env("TALLY_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("TALLY_HTTP__WORKERS", "1")
            .env("TALLY_TWILIO__AUTH_TOKENS", TOKEN)
            .envs(self.env)
            .stdin(Stdio::null());
        cmd
    }
}

/// A running `tally serve`; its [`Endpoint`] methods talk to it.
#[derive(Debug)]
pub struct Tally {
    child: Option<Child>,
    endpoint: Endpoint,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl std::ops::Deref for Tally {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Where a tally listens, and requests to it: a copy can go to another thread.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub port: u16,
}

impl Endpoint {
    /// `http://127.0.0.1:PORT`, the base of the URLs Twilio signs.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResp {
        http::request(self.port, method, target, headers, body)
    }

    /// [`Tally::request`], with a refused connection or a cut response as an error.
    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<RawResp> {
        http::try_request(self.port, method, target, headers, body)
    }

    /// `GET path`: the status and the body as JSON (`null` when it is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self.request("GET", path, &[], b"");
        let json = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
        (resp.status, json)
    }

    /// Scrape `/metrics`.
    pub fn metrics(&self) -> Scrape {
        Scrape::parse(&self.request("GET", "/metrics", &[], b"").text())
    }

    /// A form callback to `path_and_query`, signed with the test token.
    pub fn try_post_form(
        &self,
        path_and_query: &str,
        params: &[(&str, &str)],
    ) -> std::io::Result<RawResp> {
        let url = format!("{}{path_and_query}", self.base());
        let (body, signature) = signing::form(TOKEN, &url, params);
        self.try_request(
            "POST",
            path_and_query,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", &signature),
            ],
            &body,
        )
    }

    /// An Event Streams body to `/twilio/events`, signed with the test token.
    pub fn try_post_events(&self, body: &[u8]) -> std::io::Result<RawResp> {
        let url = format!("{}/twilio/events", self.base());
        let (url, signature) = signing::events(TOKEN, &url, body);
        self.try_request(
            "POST",
            signing::path_of(&url),
            &[
                ("Content-Type", "application/json"),
                ("X-Twilio-Signature", &signature),
            ],
            body,
        )
    }
}

impl Tally {
    /// The defaults, output kept in `dir` (a [`super::scratch`] directory).
    pub fn launch(dir: &Path) -> Launch {
        Launch {
            dir: dir.to_owned(),
            // State in memory unless the test asks for a journal (`journal`).
            env: vec![("TALLY_STORAGE__MEMORY_ONLY".into(), "true".into())],
            shell_prefix: None,
            port: None,
        }
    }

    /// Start with the defaults and `env`.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Tally {
        Tally::launch(dir).env(env).start()
    }

    /// Where it listens, for another thread.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Wait until `/readyz` and then `/readyz/queries` answer 200 (ready for callbacks, then
    /// start-up recovery done); fail the test with tally's output after `limit`.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for probe in ["/readyz", "/readyz/queries"] {
            self.wait_for(probe, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Wait until `GET probe` answers 200; fail the test with tally's output after `limit`.
    pub fn wait_for(&self, probe: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !matches!(
            self.try_request("GET", probe, &[], b""),
            Ok(RawResp { status: 200, .. })
        ) {
            assert!(
                Instant::now() < deadline,
                "tally did not become ready ({probe}) on port {}:\n{}",
                self.port,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Send SIGTERM and wait (up to `budget`) for the exit; returns the status and the time it
    /// took. Past the budget the process is killed and the test fails.
    pub fn terminate(&mut self, budget: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        loop {
            if let Some(status) = child.try_wait().expect("waitable") {
                return (status, started.elapsed());
            }
            if started.elapsed() > budget {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tally did not exit within {budget:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and insist on a clean exit within ten seconds.
    pub fn stop(mut self) {
        let (status, _) = self.terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "exit status {status:?}:\n{}",
            self.output()
        );
    }

    /// SIGKILL: no chance to flush or sync anything.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Every line tally wrote, stdout then stderr.
    pub fn output(&self) -> String {
        let mut all = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        all.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        all
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
