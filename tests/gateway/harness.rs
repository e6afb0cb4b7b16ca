//! The gateway as a child process, and an HTTP client to talk to it.

use std::{
    env,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;

use crate::support::Answer;

/// How long a gateway may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running gateway this test started. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    output: Output,
}

/// What a gateway printed: stdout lines, and stdout and stderr interleaved
/// for failure messages.
#[derive(Clone, Default)]
struct Output {
    stdout: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
}

impl Output {
    fn record(&self, stream: &str, line: &str) {
        let mut log = self.log.lock().unwrap();
        log.push_str(stream);
        log.push_str(line);
        log.push('\n');
    }
}

impl Gateway {
    /// Starts `gateway --listen 127.0.0.1:0 ARGS...` and waits for its
    /// `listening on ADDR` line.
    pub fn start(args: &[&str]) -> Gateway {
        Self::start_command(command(args))
    }

    /// [`start`](Self::start), in a process whose file-descriptor limit
    /// (soft and hard) is `limit`.
    #[cfg(unix)]
    pub fn start_with_fd_limit(args: &[&str], limit: u64) -> Gateway {
        use std::os::unix::process::CommandExt;
        let mut command = command(args);
        #[allow(unsafe_code)]
        // SAFETY: the closure only calls setrlimit, which is
        // async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start_command(command)
    }

    fn start_command(mut command: Command) -> Gateway {
        let binary = binary();
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));

        let output = Output::default();
        let (first_line, listening) = mpsc::channel();
        drain(child.stdout.take().unwrap(), {
            let output = output.clone();
            move |line| {
                output.record("stdout| ", &line);
                let mut stdout = output.stdout.lock().unwrap();
                if stdout.is_empty() {
                    let _ = first_line.send(line.clone());
                }
                stdout.push(line);
            }
        });
        drain(child.stderr.take().unwrap(), {
            let output = output.clone();
            move |line| output.record("stderr| ", &line)
        });

        let line = match listening.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the gateway printed no `listening on` line ({error}; exit: {status:?}); \
                     its output:\n{}",
                    output.log.lock().unwrap()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("unexpected first line on stdout: {line:?}"));
        assert_ne!(addr.port(), 0, "the gateway must print the port it bound");
        Gateway {
            child,
            addr,
            output,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `SIGsignal` (`TERM`, `INT`) to the gateway. It has not been
    /// reaped (we hold its `Child`), so the pid is still ours.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed: {status}");
    }

    /// The exit status, if the gateway has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the gateway process")
    }

    /// Waits for the gateway to exit, for at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the gateway did not exit within {limit:?}; its output:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the gateway printed so far, for failure messages.
    pub fn log(&self) -> String {
        self.output.log.lock().unwrap().clone()
    }

    /// The lines the gateway printed on stdout.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.output.stdout.lock().unwrap().clone()
    }

    /// `GET /_idempotency/stats`, parsed.
    pub async fn stats(&self) -> Value {
        let answer = send(get(&self.url("/_idempotency/stats"))).await;
        assert_eq!(answer.status, 200, "stats: {answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        serde_json::from_slice(&answer.body).expect("the stats endpoint answers JSON")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- gateway {} output ---\n{}", self.addr, self.log());
        }
    }
}

/// `gateway --listen 127.0.0.1:0 ARGS...`, its output piped.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env(
            "RUST_LOG",
            env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the gateway with `args`, expecting it to stop at once (refusing
/// them, or printing its help): returns its exit status and what it printed
/// on both streams. Fails if it is still running after ten seconds.
pub fn start_refused(args: &[&str]) -> (ExitStatus, String) {
    let mut child = command(args).spawn().expect("run the gateway");
    let (done, finished) = mpsc::channel();
    for mut stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let done = done.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            let _ = done.send(text);
        });
    }
    let mut output = Vec::new();
    for _ in 0..2 {
        match finished.recv_timeout(Duration::from_secs(10)) {
            Ok(text) => output.push(text),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway started with {args:?}");
            }
        }
    }
    (child.wait().expect("wait for the gateway"), output.concat())
}

/// Reads `stream` line by line on a thread of its own, so the child never
/// blocks on a full pipe.
fn drain(stream: impl Read + Send + 'static, mut each: impl FnMut(String) + Send + 'static) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => each(line),
                Err(_) => break,
            }
        }
    });
}

/// The example binary cargo built next to this test binary, checked to be
/// newer than the sources it is built from.
fn binary() -> PathBuf {
    let exe = env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/gateway-<hash> → target/<profile>/examples/gateway
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("gateway{}", env::consts::EXE_SUFFIX));
    let advice = "these tests run the `gateway` example as a separate process. \
                  `cargo test` builds it along with the tests, but `cargo test --test gateway` \
                  alone does not: run `cargo build --example gateway` (with the same profile \
                  and features) first";
    let built = match path.metadata().and_then(|meta| meta.modified()) {
        Ok(built) => built,
        Err(_) => panic!(
            "the gateway binary is missing at {}: {advice}",
            path.display()
        ),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("Cargo.toml")];
    collect_files(&root.join("examples/gateway"), &mut sources);
    collect_files(&root.join("src"), &mut sources);
    if let Some(newer) = sources.iter().find(|source| modified(source) > built) {
        panic!(
            "the gateway binary at {} is older than {}: {advice}",
            path.display(),
            newer.display()
        );
    }
    path
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

fn modified(path: &Path) -> SystemTime {
    path.metadata()
        .and_then(|meta| meta.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1 client with a connection pool.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request on a fresh client and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Answer {
    let response = client()
        .request(request)
        .await
        .expect("the gateway answers");
    Answer::read(response).await
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub fn post_json(url: &str, json: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(json.as_bytes())))
        .unwrap()
}

/// Waits until `check` holds, checking every 20 ms, for at most `limit`.
pub async fn until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
