//! The command line: every flag, its default, and the checks that turn a bad
//! value into a clear error at start-up.

use std::{ffi::OsString, path::PathBuf, process, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use http::HeaderName;
use tower_idempotency::{
    ai::{ModelPrice, PriceTable},
    SamplingPolicy,
};

use crate::proxy::{parse_upstream, UpstreamBase};

/// The longest timeout any flag accepts: one day. Longer is surely a typo,
/// and would overflow deadlines far in the future.
const MAX_TIMEOUT_SECS: f64 = 24.0 * 60.0 * 60.0;
/// The longest TTL: a year.
const MAX_TTL_SECS: u64 = 365 * 24 * 60 * 60;
const MIB: u64 = 1024 * 1024;
/// The largest byte size any flag accepts: 1 TiB for the cache, 1 GiB for a
/// body.
const MAX_L1_BYTES: u64 = 1024 * 1024 * MIB;
const MAX_BODY_BYTES: u64 = 1024 * MIB;
/// Prices above a million dollars (per call, or per million tokens) are
/// surely a typo.
const MAX_PRICE: f64 = 1_000_000.0;
/// The most connections `--max-connections` accepts.
const MAX_CONNECTIONS: u64 = 1_000_000;
/// The most points `--history-slots` accepts: 3.2 MB of ring.
const MAX_HISTORY_SLOTS: u64 = 100_000;

/// An idempotency reverse proxy: replays repeated requests and lets one of
/// many concurrent duplicates reach the upstream.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// A TOML file of settings named like the flags, for example
    /// `upstream = "https://api.openai.com"`, `ttl = 600`,
    /// `vary-header = ["x-tenant"]`, `control-headers = true`. Flags on the
    /// command line override it; repeatable ones add to its lists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Serve the gateway's own endpoints (dashboard, stats, metrics,
    /// health) on this address only, for example 127.0.0.1:9090, and
    /// answer 404 under /_idempotency/ on --listen. Without it they are
    /// served on --listen, to every caller of the proxy: the stats name the
    /// busiest tenants (by id) and the most replayed entries (key, model,
    /// tokens). Port 0 picks a free port (printed on stdout after the
    /// `listening on` line, as `admin listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// A host name the endpoints under /_idempotency/ answer to, besides IP
    /// addresses and `localhost`: a request for them whose `Host` names
    /// anything else is refused with 421, so that a web page cannot read the
    /// stats through a DNS name it points at this machine (DNS rebinding).
    /// Give the names operators reach the gateway by, for example
    /// gateway.internal. Repeatable.
    #[arg(long = "admin-host", value_name = "NAME", value_parser = parse_admin_host)]
    pub admin_hosts: Vec<String>,

    /// The API to forward to: http:// or https://, optionally with a base
    /// path that is put in front of every request's path.
    #[arg(long, value_name = "URL", value_parser = parse_upstream)]
    pub upstream: UpstreamBase,

    /// A Redis shared by every gateway instance (redis://host:port/db).
    /// Without it (or --redis-cluster) each gateway caches in memory only.
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    pub redis: Option<String>,

    /// Nodes of a Redis Cluster to share instead of --redis.
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',', num_args = 1..)]
    pub redis_cluster: Option<Vec<String>>,

    /// A SQLite file that keeps answers across restarts, instead of Redis
    /// (built with the `sqlite` feature). A file that cannot be opened is
    /// logged and the gateway runs on its in-process cache.
    #[cfg(feature = "sqlite")]
    #[arg(long, value_name = "PATH", conflicts_with_all = ["redis", "redis_cluster"])]
    pub sqlite: Option<PathBuf>,

    /// Part of every key: change it (a model version) to start afresh.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub namespace: String,

    /// How long a stored response is replayed, in seconds (1 to a year,
    /// and at most --max-ttl).
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = parse_ttl, allow_negative_numbers = true)]
    pub ttl: Duration,

    /// The longest an entry may be kept, in seconds (1 to a year): the
    /// ceiling of --ttl and, with --control-headers, of a caller's
    /// x-idempotency-ttl (a longer one is answered 400). 30 days by default.
    #[arg(long, value_name = "SECONDS", default_value = "2592000", value_parser = parse_ttl, allow_negative_numbers = true)]
    pub max_ttl: Duration,

    /// Largest request body fingerprinted and largest response stored, in
    /// bytes (K, M, G suffixes: powers of 1024). Larger requests pass through
    /// uncached; larger responses reach their callers in full but are not
    /// stored.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_body_size)]
    pub max_body: usize,

    /// The in-process cache's budget, in bytes (K, M, G suffixes).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_l1_capacity)]
    pub l1_capacity: u64,

    /// A request header whose value goes into the key, on top of the
    /// defaults (authorization, x-api-key, cookie, content-type, accept,
    /// accept-encoding and the AI providers' credential and version
    /// headers). Repeatable.
    #[arg(long = "vary-header", value_name = "NAME", value_parser = parse_header_name)]
    pub vary_headers: Vec<HeaderName>,

    /// Let callers steer the cache with `x-idempotency-*` request headers
    /// (bypass, refresh, ttl, namespace). Off: those headers are removed
    /// before the cache and the upstream see them. Turn it on only where
    /// every caller is trusted with the shared cache.
    #[arg(long)]
    pub control_headers: bool,

    /// What to do with sampled requests (`temperature > 0`, or none, and no
    /// `seed`): `cache` (one answer, like any other), `skip` (never cached),
    /// `window:SECONDS` (cached that long, for retries), `bucket:N` (up to N
    /// answers: the first N requests each call upstream, later repeats get
    /// one of them at random; shared through Redis).
    #[arg(long, value_name = "POLICY", default_value = "cache", value_parser = parse_sampling)]
    pub sampling: Sampling,

    /// How many tenants to count savings for (by a keyed hash of their
    /// credential, never the credential); 0 turns the count off. Shown in
    /// /_idempotency/stats and on the dashboard.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub tenants: u32,

    /// A file whose content (1 byte to 64 KiB, read as is) keys the tenant
    /// ids, so that every gateway sharing it (and a restart) gives a
    /// credential the same id. Keep it readable by the gateway only: with
    /// it, a short credential's id can be matched by trying candidates.
    /// Default: a random secret per process.
    #[arg(long, value_name = "FILE")]
    pub tenant_secret_file: Option<std::path::PathBuf>,

    /// Prices of a model, in USD per million tokens: MODEL=INPUT,OUTPUT or
    /// MODEL=INPUT,OUTPUT,CACHED_INPUT. A MODEL also prices the names it is
    /// a prefix of (gpt-4o prices gpt-4o-2024-08-06). Repeatable. Money
    /// saved appears in /_idempotency/stats.
    #[arg(long = "price", value_name = "MODEL=IN,OUT[,CACHED]", value_parser = parse_price)]
    pub prices: Vec<(String, ModelPrice)>,

    /// A flat price in USD per call, for calls no --price prices.
    #[arg(long, value_name = "USD", value_parser = parse_price_per_call, allow_negative_numbers = true)]
    pub price_per_call: Option<f64>,

    /// Seconds a client may take to send a request head, once it has
    /// started sending it.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub header_timeout: Duration,

    /// Seconds a request body may go without progress (no bytes arriving)
    /// before the request is aborted.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub body_timeout: Duration,

    /// Seconds a connection may wait for its next request (or its first)
    /// before it is closed.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub keepalive_timeout: Duration,

    /// Most client connections at once; further ones wait in the listen
    /// queue until a connection closes. Lowered at start-up to what the
    /// process's file-descriptor limit allows.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = parse_max_connections, allow_negative_numbers = true)]
    pub max_connections: usize,

    /// Seconds the upstream may take to answer with a response head; past
    /// it the caller gets 504 Gateway Timeout. Generous by default: a
    /// reasoning model can think for minutes before its first byte.
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub upstream_timeout: Duration,

    /// Seconds the upstream's response body may go without a new chunk;
    /// past it the response ends with an error and is not stored.
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub idle_timeout: Duration,

    /// Seconds a duplicate waits for the identical request in progress
    /// before it goes to the upstream itself. Default: --upstream-timeout.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub wait_timeout: Option<Duration>,

    /// Seconds per point of the dashboard's chart: the hits, coalesced
    /// requests and misses of each interval are kept in a ring (`history`
    /// in /_idempotency/stats).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_history_interval, allow_negative_numbers = true)]
    pub history_interval: Duration,

    /// Points the chart's ring keeps (1 to 100000; 32 bytes each, allocated
    /// at start-up). 360 at 10 s is the last hour.
    #[arg(long, value_name = "N", default_value = "360", value_parser = parse_history_slots, allow_negative_numbers = true)]
    pub history_slots: usize,
}

/// The command line, with the `--config` file's settings under it. Exits
/// with a message (status 2) on a bad flag, file or setting.
pub fn parse() -> Args {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let Some(path) = config_path(&argv) else {
        return Args::parse_from(argv);
    };
    let fail = |message: String| -> ! {
        eprintln!("gateway: in {}: {message}", path.display());
        process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| fail(error.to_string()));
    let settings = config_flags(&text).unwrap_or_else(|message| fail(message));

    // The file's settings alone must make sense, so that an error names it.
    let mut alone = vec![argv[0].clone()];
    alone.extend(settings.iter().cloned());
    if !settings.iter().any(|flag| flag == "--upstream") {
        alone.extend(["--upstream".into(), "http://127.0.0.1".into()]);
    }
    if let Err(error) = Args::command().try_get_matches_from(alone) {
        eprintln!("gateway: in {}:", path.display());
        error.exit();
    }
    // The command line after the file: for a flag given in both, the
    // command line's value comes last and wins.
    let mut merged = vec![argv[0].clone()];
    merged.extend(settings);
    merged.extend(argv[1..].iter().cloned());
    let matches = Args::command()
        .args_override_self(true)
        .get_matches_from(merged);
    Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The value of `--config` (or `--config=`), if given.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// A TOML file's settings as the flags they stand for.
fn config_flags(text: &str) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text.parse().map_err(|error| format!("{error}"))?;
    let command = Args::command();
    let mut flags = Vec::new();
    for (name, value) in table {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                format!("`{name}` is not a setting (settings are named like the flags)")
            })?;
        let flag = OsString::from(format!("--{name}"));
        let takes_value = arg.get_action().takes_values();
        let scalar = |value: &toml::Value| -> Result<String, String> {
            match value {
                toml::Value::String(text) => Ok(text.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::Float(x) => Ok(x.to_string()),
                _ => Err(format!("`{name}` takes a string or a number")),
            }
        };
        match (&value, takes_value) {
            (toml::Value::Boolean(on), false) => {
                if *on {
                    flags.push(flag);
                }
            }
            (_, false) => return Err(format!("`{name}` is true or false")),
            (toml::Value::Array(values), true) => {
                for value in values {
                    flags.push(flag.clone());
                    flags.push(scalar(value)?.into());
                }
            }
            (value, true) => {
                flags.push(flag);
                flags.push(scalar(value)?.into());
            }
        }
    }
    Ok(flags)
}

impl Args {
    /// The price table, if any price was given.
    pub fn price_table(&self) -> Option<PriceTable> {
        if self.prices.is_empty() && self.price_per_call.is_none() {
            return None;
        }
        let mut table = PriceTable::new();
        for (model, price) in &self.prices {
            table = table.with_model_price(model.clone(), *price);
        }
        if let Some(dollars) = self.price_per_call {
            table = table.with_per_call(dollars);
        }
        Some(table)
    }
}

/// Seconds, fractions allowed: more than zero, at most a day.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    if seconds > MAX_TIMEOUT_SECS {
        return Err(format!(
            "must be at most {MAX_TIMEOUT_SECS} seconds (a day)"
        ));
    }
    let duration = Duration::from_secs_f64(seconds);
    if duration < Duration::from_millis(1) {
        return Err("must be at least 0.001 seconds".into());
    }
    Ok(duration)
}

/// Whole seconds, 1 to a year.
/// The `--sampling` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Cache,
    Policy(SamplingPolicy),
}

fn parse_sampling(text: &str) -> Result<Sampling, String> {
    let text = text.trim();
    match text.split_once(':') {
        None if text == "cache" => Ok(Sampling::Cache),
        None if text == "skip" => Ok(Sampling::Policy(SamplingPolicy::Skip)),
        Some(("window", seconds)) => Ok(Sampling::Policy(SamplingPolicy::RetryWindow(parse_ttl(
            seconds,
        )?))),
        Some(("bucket", count)) => {
            let max = SamplingPolicy::MAX_BUCKETS;
            let digits = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
            match count.parse::<u32>() {
                Ok(n) if digits && (1..=max).contains(&n) => {
                    Ok(Sampling::Policy(SamplingPolicy::Bucket(n)))
                }
                _ => Err(format!("bucket:N needs N from 1 to {max}, not `{count}`")),
            }
        }
        _ => Err(format!(
            "`{text}` is not one of cache, skip, window:SECONDS, bucket:N"
        )),
    }
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let seconds: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))?;
    if seconds == 0 {
        return Err("must be at least 1 second".into());
    }
    if seconds > MAX_TTL_SECS {
        return Err(format!("must be at most {MAX_TTL_SECS} seconds (a year)"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Bytes: digits with an optional K, M or G suffix (powers of 1024; `KiB`,
/// `MB` and the like are read the same way).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes (like 65536, 64K or 16M)"))?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => 1024 * MIB,
        _ => return Err(format!("`{text}`: unknown unit (use K, M or G)")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn parse_body_size(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    if bytes == 0 {
        return Err("must be at least 1 byte".into());
    }
    if bytes > MAX_BODY_BYTES {
        return Err("must be at most 1G".into());
    }
    usize::try_from(bytes).map_err(|_| "too large for this machine".into())
}

fn parse_l1_capacity(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < MIB {
        return Err("must be at least 1M".into());
    }
    if bytes > MAX_L1_BYTES {
        return Err("must be at most 1024G".into());
    }
    Ok(bytes)
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > MAX_CONNECTIONS {
        return Err(format!("must be at most {MAX_CONNECTIONS}"));
    }
    usize::try_from(n).map_err(|_| "too large for this machine".into())
}

/// A timeout, and at least 10 ms: the sampler wakes once per interval.
fn parse_history_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_timeout(text)?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 0.01 seconds".into());
    }
    Ok(interval)
}

fn parse_history_slots(text: &str) -> Result<usize, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if n == 0 || n > MAX_HISTORY_SLOTS {
        return Err(format!("must be 1 to {MAX_HISTORY_SLOTS}"));
    }
    usize::try_from(n).map_err(|_| "too large for this machine".into())
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("`{text}` is not a header name"))
}

/// A DNS name as a `Host` header carries it: letters, digits, `-` and `.`,
/// 1 to 253 bytes, compared in lower case and without a trailing dot.
fn parse_admin_host(text: &str) -> Result<String, String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "`{text}` is not a host name (letters, digits, `-` and `.`; IP addresses are always allowed)"
        ))
    }
}

/// Dollars: finite, not negative, at most a million.
fn parse_dollars(text: &str) -> Result<f64, String> {
    let dollars: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of dollars"))?;
    if !dollars.is_finite() || dollars < 0.0 {
        return Err(format!(
            "`{text}`: a price is a number of dollars, 0 or more"
        ));
    }
    if dollars > MAX_PRICE {
        return Err(format!("`{text}`: a price is at most {MAX_PRICE} dollars"));
    }
    Ok(dollars)
}

fn parse_price_per_call(text: &str) -> Result<f64, String> {
    parse_dollars(text)
}

/// `MODEL=INPUT,OUTPUT[,CACHED_INPUT]`.
fn parse_price(text: &str) -> Result<(String, ModelPrice), String> {
    let (model, prices) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected MODEL=INPUT,OUTPUT[,CACHED_INPUT]"))?;
    let model = model.trim();
    if model.is_empty() {
        return Err(format!("`{text}`: the model name is empty"));
    }
    let prices = prices
        .split(',')
        .map(parse_dollars)
        .collect::<Result<Vec<_>, _>>()?;
    let price = match prices[..] {
        [input, output] => ModelPrice::new(input, output),
        [input, output, cached] => ModelPrice::new(input, output).with_cached_input(cached),
        _ => {
            return Err(format!(
                "`{text}`: expected two or three prices (input, output, cached input)"
            ))
        }
    };
    Ok((model.to_owned(), price))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_policies() {
        assert_eq!(parse_sampling("cache"), Ok(Sampling::Cache));
        assert_eq!(
            parse_sampling("skip"),
            Ok(Sampling::Policy(SamplingPolicy::Skip))
        );
        assert_eq!(
            parse_sampling("window:30"),
            Ok(Sampling::Policy(SamplingPolicy::RetryWindow(
                Duration::from_secs(30)
            )))
        );
        assert_eq!(
            parse_sampling("bucket:3"),
            Ok(Sampling::Policy(SamplingPolicy::Bucket(3)))
        );
        assert_eq!(
            parse_sampling("bucket:1000"),
            Ok(Sampling::Policy(SamplingPolicy::Bucket(1000)))
        );
        for bad in [
            "bucket:0",
            "bucket:1001",
            "bucket:+3",
            "bucket:",
            "bucket:x",
            "window:0",
            "window:-1",
            "often",
            "",
            "bucket",
        ] {
            assert!(parse_sampling(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "1e30", "soon", "", "0.0000001"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("16M"), Ok(16 * MIB));
        assert_eq!(parse_bytes("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_bytes("100"), Ok(100));
        for bad in [
            "",
            "M",
            "1T",
            "-1",
            "99999999999999999999",
            "18446744073709551615G",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prices() {
        let (model, price) = parse_price("gpt-4o=2.5,10,1.25").unwrap();
        assert_eq!(model, "gpt-4o");
        assert_eq!(price, ModelPrice::new(2.5, 10.0).with_cached_input(1.25));
        for bad in [
            "gpt-4o",
            "=1,2",
            "m=1",
            "m=1,2,3,4",
            "m=a,b",
            "m=-1,2",
            "m=1,inf",
        ] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }
}
