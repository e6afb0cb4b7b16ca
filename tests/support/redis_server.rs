//! Throwaway Redis servers for integration tests.
//!
//! [`RedisServer`] runs a `redis-server` child process that this test started
//! itself: it listens on a free loopback port, keeps no data on disk, and lives
//! in its own temporary directory. Dropping the handle kills the process and
//! removes the directory. [`RedisCluster`] starts three such servers in cluster
//! mode and joins them into a 3-master cluster (no replicas).
//!
//! The helpers only ever signal or query processes they spawned, so a Redis
//! already running on the machine (for example on `127.0.0.1:6379`) is never
//! used. Several tests, in one test binary or in several running at once, can
//! start servers in parallel.
//!
//! `redis-server` and `redis-cli` must be on `PATH`. If they are missing the
//! helpers panic with installation advice: tests fail, they are not skipped.
//!
//! Pausing and resuming use the shell's `kill` builtin (`sh -c 'kill -s STOP
//! PID'`), so the module needs no crates beyond `std`; it is Unix-only.

// Each integration-test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Panic message used when `redis-server` cannot be found.
const REDIS_SERVER_MISSING: &str = "redis-server not found on PATH: install it \
     (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`)";

/// Panic message used when `redis-cli` cannot be found.
const REDIS_CLI_MISSING: &str = "redis-cli not found on PATH: install it \
     (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`)";

/// How long a freshly spawned server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new cluster may take to report `cluster_state:ok` on every node.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many fresh ports [`RedisServer::start`] tries before giving up.
const START_ATTEMPTS: usize = 10;

/// How long [`RedisServer::restart`] keeps retrying while its port is busy.
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);

/// Number of masters in a [`RedisCluster`].
const CLUSTER_SIZE: usize = 3;

/// Redis puts the cluster bus on the client port plus this offset.
const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Name of the log file (redis stdout and stderr) inside the server directory.
const LOG_FILE: &str = "redis.log";

/// Extra `redis-server` arguments for cluster nodes.
const CLUSTER_NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "5000",
    "--cluster-announce-ip",
    "127.0.0.1",
];

/// Numbers the temporary directories created by this process.
static NEXT_DIR_ID: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` process this test started, on a free loopback port, with
/// persistence off.
///
/// All methods take `&self` and the type is `Send + Sync`, so a server can be
/// shared through an `Arc` with tasks that pause, kill or restart it while
/// other tasks use it. Dropping the handle kills the process (resuming it
/// first if it is paused) and removes its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    extra_args: Vec<String>,
    process: Mutex<Option<Process>>,
    // Declared last so the directory is removed after `Drop::drop` has killed
    // the process.
    dir: TempDir,
}

/// The running child process of a [`RedisServer`].
#[derive(Debug)]
struct Process {
    child: Child,
    paused: bool,
}

/// How a new server's port is chosen.
#[derive(Clone, Copy, Debug)]
enum PortKind {
    /// Any free loopback port.
    Single,
    /// A free port `p <= 55535` whose cluster bus port `p + 10000` is free too.
    ClusterNode,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port and waits until it
    /// answers `PING`.
    ///
    /// The server runs with `--bind 127.0.0.1 --save "" --appendonly no
    /// --protected-mode no` in a fresh temporary directory that also holds its
    /// log (`redis.log`). If another process grabs the port before Redis binds
    /// it, a new port is tried.
    ///
    /// # Panics
    ///
    /// Panics with installation advice if `redis-server` is not on `PATH`, and
    /// with the server log if it fails to start or is not ready within 10 s.
    pub fn start() -> RedisServer {
        Self::start_with(&[], PortKind::Single)
    }

    fn start_with(extra_args: &[&str], kind: PortKind) -> RedisServer {
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = kind.pick();
            let dir = TempDir::create(port);
            match spawn_ready(port, dir.path(), &extra_args) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        extra_args,
                        process: Mutex::new(Some(Process {
                            child,
                            paused: false,
                        })),
                        dir,
                    };
                }
                Err(busy) => failures.push(busy),
            }
        }
        panic!(
            "could not start redis-server: every port tried was taken \
             ({START_ATTEMPTS} attempts):\n{}",
            failures.join("\n")
        );
    }

    /// The TCP port the server listens on (on `127.0.0.1`). It never changes,
    /// not even across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's temporary directory, which holds its log file
    /// (`redis.log`). It is removed when the server is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the server with `SIGSTOP`.
    ///
    /// While paused, the kernel still accepts TCP connections but the server
    /// never answers, so clients see timeouts rather than refused
    /// connections. Pausing a paused server does nothing.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running (it was killed).
    pub fn pause(&self) {
        let mut process = self.lock();
        let process = process.as_mut().unwrap_or_else(|| {
            panic!("pause(): redis-server on port {} is not running", self.port)
        });
        if !process.paused {
            send_signal(&process.child, "STOP");
            wait_for_stopped_state(&process.child, true);
            process.paused = true;
        }
    }

    /// Continues a paused server with `SIGCONT`. Does nothing if the server is
    /// not paused or not running.
    pub fn resume(&self) {
        let mut process = self.lock();
        if let Some(process) = process.as_mut().filter(|process| process.paused) {
            send_signal(&process.child, "CONT");
            wait_for_stopped_state(&process.child, false);
            process.paused = false;
        }
    }

    /// Kills the server with `SIGKILL` and waits for it to exit; afterwards
    /// connections to its port are refused. Its data is lost. Killing a
    /// server that is not running does nothing.
    pub fn kill(&self) {
        if let Some(process) = self.lock().take() {
            process.stop();
        }
    }

    /// Kills the server if it is running, then starts it again on the same
    /// port and waits until it answers `PING`.
    ///
    /// The new server is empty (persistence is off). A cluster node keeps its
    /// `nodes.conf`, so it rejoins the cluster with the same node ID and slots.
    ///
    /// # Panics
    ///
    /// Panics if the port is still taken by another process after 5 s of
    /// retries, or if the server fails to start.
    pub fn restart(&self) {
        let mut process = self.lock();
        if let Some(old) = process.take() {
            old.stop();
        }
        // Nothing should have been written, but make sure no data survives.
        for file in ["dump.rdb", "appendonly.aof"] {
            let _ = fs::remove_file(self.dir().join(file));
        }
        let _ = fs::remove_dir_all(self.dir().join("appendonlydir"));

        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            match spawn_ready(self.port, self.dir(), &self.extra_args) {
                Ok(child) => {
                    *process = Some(Process {
                        child,
                        paused: false,
                    });
                    return;
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Err(busy) => panic!(
                    "restart(): could not bring redis-server back on port {} \
                     within {RESTART_TIMEOUT:?}: {busy}",
                    self.port
                ),
            }
        }
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its standard
    /// output, trimmed.
    ///
    /// Options may come first in `args` (for example `["-c", "get", "k"]` to
    /// follow cluster redirects). A Redis error reply is not a failure: it is
    /// returned as text (`"ERR ..."`). `redis-cli` waits forever for a paused
    /// server, so do not call this while the server is paused.
    ///
    /// # Panics
    ///
    /// Panics with `redis-cli`'s stderr if it exits unsuccessfully (for
    /// example because the server is not running), or with installation
    /// advice if `redis-cli` is not on `PATH`.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut all_args = vec!["-h", "127.0.0.1", "-p", &port];
        all_args.extend_from_slice(args);
        redis_cli(&all_args)
    }

    /// Locks the process state, ignoring poisoning: a panic elsewhere must not
    /// stop `Drop` from killing the server.
    fn lock(&self) -> MutexGuard<'_, Option<Process>> {
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RedisServer {
    /// Kills the server (resuming it first if paused) and waits for it; the
    /// temporary directory is removed right after.
    fn drop(&mut self) {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(process) = process {
            process.stop();
        }
    }
}

impl Process {
    /// Resumes the process if paused, then kills it and reaps it.
    fn stop(mut self) {
        if self.paused {
            // SIGKILL also ends a stopped process; resuming is belt and braces.
            send_signal(&self.child, "CONT");
        }
        reap(&mut self.child);
    }
}

/// A 3-master Redis Cluster (no replicas) this test started.
///
/// Each node is a [`RedisServer`] started with `--cluster-enabled yes` and its
/// own temporary directory (for `nodes.conf`); the cluster is created with
/// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`.
/// Dropping the cluster kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-mode servers, joins them into a cluster with the
    /// 16384 slots split between them, and waits until every node reports
    /// `cluster_state:ok` and knows all three nodes.
    ///
    /// # Panics
    ///
    /// Panics if a node fails to start (see [`RedisServer::start`]), if
    /// `redis-cli --cluster create` fails, or if the cluster is not ready
    /// within 30 s.
    pub fn start() -> RedisCluster {
        Self::start_with(0, &[])
    }

    /// Three masters, each with one replica, that keep serving the slots of
    /// the masters still up when one is gone (`cluster-require-full-coverage
    /// no`), and declare a silent node failed after `node_timeout`. Nodes
    /// `0..3` are the masters, node `3 + i` replicates node `i`; waits until
    /// every replica has synced with its master.
    pub fn start_with_replicas(node_timeout: Duration) -> RedisCluster {
        let timeout = node_timeout.as_millis().to_string();
        Self::start_with(
            1,
            &[
                "--cluster-node-timeout",
                &timeout,
                "--cluster-require-full-coverage",
                "no",
                "--cluster-replica-validity-factor",
                "0",
            ],
        )
    }

    /// Three masters that keep serving their slots when another master is
    /// gone (`cluster-require-full-coverage no`).
    pub fn start_partial_coverage() -> RedisCluster {
        Self::start_with(0, &["--cluster-require-full-coverage", "no"])
    }

    fn start_with(replicas: usize, extra: &[&str]) -> RedisCluster {
        let mut args: Vec<&str> = CLUSTER_NODE_ARGS.to_vec();
        args.extend_from_slice(extra);
        let nodes: Vec<RedisServer> = (0..CLUSTER_SIZE * (1 + replicas))
            .map(|_| RedisServer::start_with(&args, PortKind::ClusterNode))
            .collect();

        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let replicas_arg = replicas.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        redis_cli(&args);

        let cluster = RedisCluster { nodes };
        cluster.wait_until_ready();
        if replicas > 0 {
            cluster.pair_replicas();
        }
        cluster
    }

    /// Makes node `3 + i` the replica of node `i` (`redis-cli` pairs them
    /// its own way), and waits until every replica has synced.
    fn pair_replicas(&self) {
        for i in 0..CLUSTER_SIZE {
            let id = self.nodes[i].cli(&["CLUSTER", "MYID"]);
            let replica = &self.nodes[CLUSTER_SIZE + i];
            let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
            let master_port = format!("master_port:{}", self.nodes[i].port());
            loop {
                let info = replica.cli(&["INFO", "replication"]);
                let paired = info.lines().any(|l| l.trim() == master_port);
                if paired && info.lines().any(|l| l.trim() == "master_link_status:up") {
                    break;
                }
                let answer = if paired {
                    String::new()
                } else {
                    replica.cli(&["CLUSTER", "REPLICATE", &id])
                };
                assert!(
                    Instant::now() < deadline,
                    "replica on port {} did not sync with its master: {answer}\n{info}\n{}",
                    replica.port(),
                    log_tail(&replica.dir().join(LOG_FILE), 0)
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of any live node).
    pub fn keyslot(&self, key: &str) -> u16 {
        for node in &self.nodes {
            if let Ok(slot) = request(
                node.port(),
                &format!("CLUSTER KEYSLOT {key}"),
                Duration::from_secs(1),
            ) {
                if let Ok(slot) = slot.parse() {
                    return slot;
                }
            }
        }
        panic!("no node answered CLUSTER KEYSLOT");
    }

    /// The index of the node serving `slot` as a master now, as node `asked`
    /// sees it (`CLUSTER NODES`).
    pub fn master_of(&self, slot: u16, asked: usize) -> usize {
        self.slot_owners(asked)
            .into_iter()
            .find(|(range, _)| range.contains(&slot))
            .map(|(_, node)| node)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Which node serves which slots as a master, as node `asked` sees it
    /// (`CLUSTER NODES`; nodes flagged as failing are left out).
    pub fn slot_owners(&self, asked: usize) -> Vec<(std::ops::RangeInclusive<u16>, usize)> {
        let nodes = self.nodes[asked].cli(&["CLUSTER", "NODES"]);
        let mut owners = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(node) = fields[1]
                .split(['@', ','])
                .next()
                .and_then(|address| address.rsplit_once(':'))
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .and_then(|port| self.nodes.iter().position(|node| node.port() == port))
            else {
                continue;
            };
            for range in &fields[8..] {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>()) {
                    owners.push((start..=end, node));
                }
            }
        }
        owners
    }

    /// The connection URLs of all nodes, `redis://127.0.0.1:PORT/` each.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// All nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i` (`0..3`, or `0..6` with replicas).
    ///
    /// # Panics
    ///
    /// Panics if `i` is out of range.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Polls `CLUSTER INFO` on every node until each reports
    /// `cluster_state:ok` and `cluster_known_nodes:3`.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let known_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        for node in &self.nodes {
            loop {
                let info = request(node.port(), "CLUSTER INFO", Duration::from_secs(1))
                    .unwrap_or_else(|error| format!("(CLUSTER INFO failed: {error})"));
                let ready = info.lines().any(|line| line.trim() == "cluster_state:ok")
                    && info.lines().any(|line| line.trim() == known_nodes);
                if ready {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "Redis cluster not ready within {CLUSTER_READY_TIMEOUT:?}: node on port \
                         {} reports:\n{info}\nlog tail ({}):\n{}",
                        node.port(),
                        node.dir().join(LOG_FILE).display(),
                        log_tail(&node.dir().join(LOG_FILE), 0),
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl PortKind {
    /// Finds a currently free port by letting the OS pick one for a throwaway
    /// listener. The port may be taken again before Redis binds it; callers
    /// retry in that case.
    fn pick(self) -> u16 {
        for _ in 0..1000 {
            let listener = bind_loopback(0).expect("cannot bind a TCP listener on 127.0.0.1");
            let port = listener
                .local_addr()
                .expect("cannot read the listener's address")
                .port();
            match self {
                PortKind::Single => return port,
                PortKind::ClusterNode => {
                    if port <= u16::MAX - CLUSTER_BUS_OFFSET
                        && bind_loopback(port + CLUSTER_BUS_OFFSET).is_ok()
                    {
                        return port;
                    }
                }
            }
        }
        panic!("could not find a free port whose cluster bus port (+{CLUSTER_BUS_OFFSET}) is free");
    }
}

fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A directory under [`std::env::temp_dir`], removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory named after this process, a counter and the
    /// port.
    fn create(port: u16) -> TempDir {
        let id = NEXT_DIR_ID.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("test-redis-{}-{id}-{port}", std::process::id()));
        // A leftover from an earlier process with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Spawns `redis-server` on `port` and waits until it answers `PING`.
///
/// Returns `Err` with a description if the port turned out to be taken by
/// another process; panics on any other failure.
fn spawn_ready(port: u16, dir: &Path, extra_args: &[String]) -> Result<Child, String> {
    let log_path = dir.join(LOG_FILE);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", log_path.display()));
    let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = writeln!(
        log,
        "--- test support: starting redis-server on port {port}"
    );
    let log_err = log
        .try_clone()
        .unwrap_or_else(|error| panic!("cannot clone {}: {error}", log_path.display()));

    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|error| match error.kind() {
            io::ErrorKind::NotFound => panic!("{REDIS_SERVER_MISSING}"),
            _ => panic!("cannot spawn redis-server: {error}"),
        });

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let tail = log_tail(&log_path, log_start);
                if tail.contains("Address already in use") {
                    return Err(format!("port {port} (or its cluster bus port) is in use"));
                }
                panic!(
                    "redis-server on port {port} exited during startup ({status}); log tail ({}):\n{tail}",
                    log_path.display()
                );
            }
            Err(error) => {
                reap(&mut child);
                panic!("cannot check on redis-server (port {port}): {error}");
            }
        }
        if request(port, "PING", Duration::from_millis(500)).is_ok_and(|reply| reply == "PONG") {
            break;
        }
        if Instant::now() >= deadline {
            reap(&mut child);
            panic!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; \
                 log tail ({}):\n{}",
                log_path.display(),
                log_tail(&log_path, log_start)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }

    // The answer might have come from another process that took the port
    // while our server failed to bind it: make sure it is our child.
    let info = request(port, "INFO server", Duration::from_secs(2)).unwrap_or_default();
    let pid = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("process_id:"))
        .and_then(|pid| pid.parse::<u32>().ok());
    if pid == Some(child.id()) {
        Ok(child)
    } else {
        reap(&mut child);
        Err(format!(
            "port {port} is served by another process (pid {pid:?}, ours was {})",
            child.id()
        ))
    }
}

/// Sends an inline command over a fresh connection to `127.0.0.1:port` and
/// returns the reply: the text of a status or error line, or the contents of a
/// bulk string. Fails on connection errors and timeouts.
fn request(port: u16, command: &str, timeout: Duration) -> io::Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;

    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    match line.strip_prefix('$') {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {line}"))
            })?;
            let mut body = vec![0; length + 2];
            reader.read_exact(&mut body)?;
            body.truncate(length);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        None => Ok(line.get(1..).unwrap_or_default().to_string()),
    }
}

/// Runs `redis-cli ARGS...` and returns its trimmed stdout; panics on failure.
fn redis_cli(args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| match error.kind() {
            io::ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
            _ => panic!("cannot run redis-cli: {error}"),
        });
    if !output.status.success() {
        panic!(
            "`redis-cli {}` failed ({}):\nstderr: {}\nstdout: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim(),
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Sends `SIGsignal` to our child. The child has not been reaped yet (we hold
/// its `Child`), so its pid cannot belong to any other process.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("cannot run `kill -s {signal}`: {error}"));
    assert!(
        status.success(),
        "`kill -s {signal} {}` failed ({status})",
        child.id()
    );
}

/// On Linux, waits (up to 2 s) until the kernel reports the child as stopped
/// (`stopped == true`) or not stopped, so callers observe the new state right
/// away. Elsewhere this returns immediately.
fn wait_for_stopped_state(child: &Child, stopped: bool) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let stat_path = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok(stat) = fs::read_to_string(&stat_path) else {
            return;
        };
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some(state) if (state == "T") == stopped => return,
            Some(_) => thread::sleep(Duration::from_millis(1)),
            None => return,
        }
    }
}

/// Kills and reaps a child, ignoring errors (it may have exited already).
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The last 40 lines of the log written since byte `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let _ = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(from))?;
        file.read_to_string(&mut text)
    });
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
