//! Typed settings, layered: defaults compiled into the binary → `--config` file →
//! `TALLY_<SECTION>__<KEY>` environment variables. Only a relative `storage.dir` depends on the
//! working directory.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented defaults, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Every setting of tally.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub twilio: TwilioSettings,
    pub ingest: IngestSettings,
    pub storage: StorageSettings,
    pub api: ApiSettings,
    pub privacy: PrivacySettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub kafka: KafkaSettings,
    pub reconcile: ReconcileSettings,
    pub cluster: ClusterSettings,
}

/// How this process takes part in a cluster (docs/cluster.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// One process with its local journal: no cluster.
    Single,
    /// Stateless: verify, decode, produce the events to the events topic.
    Ingest,
    /// Fold the events topic's partitions this process owns; serve and publish them.
    Aggregate,
    /// Ingest and aggregate in one process.
    All,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Single => "single",
            ClusterRole::Ingest => "ingest",
            ClusterRole::Aggregate => "aggregate",
            ClusterRole::All => "all",
        }
    }

    /// Whether callbacks go to the events topic rather than the local journal.
    pub fn ingests(self) -> bool {
        matches!(self, ClusterRole::Ingest | ClusterRole::All)
    }

    /// Whether this process folds partitions of the events topic.
    pub fn aggregates(self) -> bool {
        matches!(self, ClusterRole::Aggregate | ClusterRole::All)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub role: ClusterRole,
    pub events_topic: String,
    pub group_id: String,
    #[serde(deserialize_with = "empty_is_none")]
    pub advertise_url: Option<String>,
    #[serde(with = "humantime_serde_shim")]
    pub produce_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub commit_interval: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub fence_margin: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub forward_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "empty_is_none")]
    pub public_url: Option<String>,
    pub trust_forwarded_headers: bool,
    pub max_body_bytes: usize,
    pub workers: usize,
    #[serde(with = "humantime_serde_shim")]
    pub shutdown_timeout: Duration,
    // Hostile clients and exposure (docs/security.md).
    #[serde(deserialize_with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    pub callback_allow_networks: crate::cidr::NetworkList,
    pub max_events_per_batch: usize,
    pub max_inflight_callbacks: usize,
    #[serde(with = "humantime_serde_shim")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub client_request_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub client_disconnect_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub keep_alive: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub auth_tokens: Secrets,
    #[serde(deserialize_with = "empty_is_none")]
    pub auth_tokens_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub max_held_attempts: usize,
    #[serde(with = "humantime_serde_shim")]
    pub held_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Where the journal and snapshots live; see [`StorageSettings::data_dir`].
    #[serde(deserialize_with = "empty_is_none")]
    pub dir: Option<String>,
    /// State in memory only: `dir` is unused and a restart forgets everything.
    pub memory_only: bool,
    pub fsync: crate::journal::FsyncMode,
    pub segment_bytes: u64,
    pub max_group: usize,
    /// Zeros written ahead of the journal's records, per extension of a segment (0: none).
    pub preallocate_bytes: u64,
    /// How much the journal's writer thread lowers its scheduling priority (a nice increment,
    /// 0 – 19; 0: as the rest of tally).
    pub writer_nice: i32,
    #[serde(with = "humantime_serde_shim")]
    pub snapshot_interval: Duration,
    pub snapshot_bytes: u64,
    /// Most callback events held while start-up recovery runs (503 beyond).
    pub max_recovery_backlog_events: u64,
    /// Threads of start-up recovery (decoding ahead, loading snapshots); 0: one per core.
    pub recovery_threads: usize,
}

impl StorageSettings {
    /// The data directory, or `None` when state is kept in memory only (asked for with
    /// `memory_only`). A relative directory is taken from the working directory.
    pub fn data_dir(&self) -> Option<PathBuf> {
        if self.memory_only {
            return None;
        }
        self.dir.as_ref().map(PathBuf::from)
    }

    /// The journal's configuration in the data directory `dir`.
    pub fn journal_config(&self, dir: &Path) -> crate::journal::JournalConfig {
        crate::journal::JournalConfig {
            dir: dir.to_owned(),
            fsync: self.fsync,
            segment_bytes: self.segment_bytes,
            max_group: self.max_group,
            preallocate_bytes: self.preallocate_bytes,
            writer_nice: self.writer_nice,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub credentials: Secrets,
    pub max_page_size: usize,
}

/// What personal data tally keeps (docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// Keep recipient addresses (`to.address`, `To`); when false they are dropped at ingest,
    /// before the journal, and the query API shows `null`.
    pub keep_recipient_addresses: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    #[serde(with = "humantime_serde_shim")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub sweep_interval: Duration,
    pub max_resources: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    /// At most one "signature rejected" line per this interval; the rest are only counted.
    #[serde(with = "humantime_serde_shim")]
    pub signature_failure_interval: Duration,
}

/// Reading Twilio's REST API to converge to its numbers (docs/reconcile.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub api_base: String,
    /// An API key SID (or the Account SID); empty turns reconciliation off.
    pub username: String,
    /// The API key's secret (or the auth token): never shown by `Debug`.
    pub password: Secret,
    #[serde(deserialize_with = "empty_is_none")]
    pub password_file: Option<String>,
    #[serde(with = "humantime_serde_shim")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub max_interval: Duration,
    pub requests_per_second: f64,
    pub page_size: u32,
    #[serde(with = "humantime_serde_shim")]
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    #[serde(with = "humantime_serde_shim")]
    pub discovery_overlap: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub max_backoff: Duration,
}

impl ReconcileSettings {
    pub fn enabled(&self) -> bool {
        !self.username.trim().is_empty()
    }

    /// The reconciler's configuration, given the retention that bounds its look-back; `None`
    /// when reconciliation is off.
    pub fn config(&self, retention_ttl: Duration) -> Option<crate::reconcile::ReconcileConfig> {
        if !self.enabled() {
            return None;
        }
        let ms = |d: Duration| d.as_millis() as u64;
        Some(crate::reconcile::ReconcileConfig {
            api_base: self.api_base.trim_end_matches('/').to_owned(),
            username: self.username.trim().to_owned(),
            password: self.password.0.clone().unwrap_or_default(),
            page_size: self.page_size,
            request_timeout: self.request_timeout,
            max_response_bytes: self.max_response_bytes,
            plan: crate::reconcile::plan::PlanConfig {
                interval_ms: ms(self.interval),
                max_interval_ms: ms(self.max_interval),
                lookback_ms: ms(retention_ttl),
                overlap_ms: ms(self.discovery_overlap),
                requests_per_second: self.requests_per_second,
                max_backoff_ms: ms(self.max_backoff),
            },
        })
    }
}

/// Publishing rolled-up state to Kafka (docs/kafka.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers; empty turns publishing off.
    pub brokers: Vec<String>,
    pub topic: String,
    #[serde(deserialize_with = "empty_is_none")]
    pub resources_topic: Option<String>,
    #[serde(with = "humantime_serde_shim")]
    pub flush_interval: Duration,
    pub client_id: String,
    pub create_topics: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    #[serde(with = "humantime_serde_shim")]
    pub topic_setup_retry: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub shutdown_timeout: Duration,
    /// With records in flight and a broker connected, how long without any acknowledgement
    /// before the producer is replaced.
    #[serde(with = "humantime_serde_shim")]
    pub stall_timeout: Duration,
    pub librdkafka: LibrdkafkaOptions,
}

impl KafkaSettings {
    /// Whether publishing is on (brokers are configured).
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }
}

/// librdkafka properties passed through verbatim. `Debug` shows the keys only: values may be
/// passwords or keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LibrdkafkaOptions(pub BTreeMap<String, String>);

impl LibrdkafkaOptions {
    /// The value of one property, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for LibrdkafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl<'de> Deserialize<'de> for LibrdkafkaOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = toml::Table::deserialize(d)?;
        let mut out = BTreeMap::new();
        // Unquoted dotted keys (`security.protocol = "SSL"`) arrive as nested tables: flatten
        // them first, so that a quoted key or an environment variable for the same property wins.
        flatten_props("", &raw, true, &mut out).map_err(serde::de::Error::custom)?;
        flatten_props("", &raw, false, &mut out).map_err(serde::de::Error::custom)?;
        Ok(LibrdkafkaOptions(out))
    }
}

fn flatten_props(
    prefix: &str,
    t: &toml::Table,
    nested: bool,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::Table(inner) => {
                if nested {
                    flatten_props(&key, inner, true, out)?;
                }
                continue;
            }
            _ if nested && prefix.is_empty() => continue,
            _ if !nested && !prefix.is_empty() => continue,
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "kafka.librdkafka.\"{key}\" must be a string, number or boolean"
                ))
            }
        };
        out.insert(key, text);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A list of secret strings (auth tokens, API credentials): never shown by `Debug`.
#[derive(Clone, Default)]
pub struct Secrets(Vec<SecretString>);

impl Secrets {
    pub fn new<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Secrets {
        Secrets(
            items
                .into_iter()
                .map(|s| SecretString::from(s.into()))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secrets themselves, for the one place that needs them (HMAC keys, auth checks).
    pub fn expose(&self) -> Vec<&str> {
        self.0.iter().map(|s| s.expose_secret()).collect()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        Ok(Secrets::new(v.into_iter().filter(|s| !s.trim().is_empty())))
    }
}

/// One secret string (a password): never shown by `Debug`; empty is none.
#[derive(Clone, Default)]
pub struct Secret(Option<SecretString>);

impl Secret {
    pub fn new(s: &str) -> Secret {
        Secret((!s.trim().is_empty()).then(|| SecretString::from(s.to_owned())))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "[redacted]"
        } else {
            "[none]"
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret::new(&String::deserialize(d)?))
    }
}

fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    empty_is_none(d)?
        .map(|s| {
            s.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not an address like 127.0.0.1:9090"))
            })
        })
        .transpose()
}

mod humantime_serde_shim {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?}: {e} (use units: \"5s\")"))
        })
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("unknown config key `{0}`")]
    UnknownKey(String),
    #[error("invalid value for {key}: {message}")]
    Env { key: String, message: String },
    #[error("invalid settings: {0}")]
    Invalid(String),
}

impl Settings {
    /// Load the compiled-in defaults, then `file`, then the given environment variables.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(|e| ConfigError::Parse {
                path: "<embedded default>".into(),
                message: e.to_string(),
            })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let user: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut table, user, "")?;
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TALLY_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            if let Some(prop) = key.strip_prefix(&format!("{PASSTHROUGH_KEY}__")) {
                if section == PASSTHROUGH_SECTION && !prop.is_empty() {
                    passthrough_table(&mut table)?
                        .insert(prop.replace('_', "."), toml::Value::String(value));
                    continue;
                }
            }
            let dotted = format!("{section}.{key}");
            let sect = table
                .get_mut(&section)
                .and_then(|v| v.as_table_mut())
                .ok_or_else(|| ConfigError::UnknownKey(format!("{dotted} (from {name})")))?;
            let old = sect
                .get(&key)
                .ok_or_else(|| ConfigError::UnknownKey(format!("{dotted} (from {name})")))?;
            let new = env_value(old, &value).map_err(|message| ConfigError::Env {
                key: name.clone(),
                message,
            })?;
            sect.insert(key, new);
        }
        let mut settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        settings.read_token_file()?;
        settings.read_reconcile_password_file()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The aggregator's bounds: held attempts (`[ingest]`), tracked resources (`[retention]`)
    /// and whether addresses are kept (`[privacy]`).
    pub fn limits(&self) -> crate::aggregator::Limits {
        crate::aggregator::Limits {
            max_held: self.ingest.max_held_attempts,
            held_ttl_ms: self.ingest.held_ttl.as_millis() as u64,
            max_resources: self.retention.max_resources,
            keep_recipient_addresses: self.privacy.keep_recipient_addresses,
        }
    }

    /// Load with the process environment.
    pub fn load_from_env(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load(file, std::env::vars())
    }

    fn read_token_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.twilio.auth_tokens_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: PathBuf::from(path),
            source,
        })?;
        let mut all: Vec<String> = self
            .twilio
            .auth_tokens
            .expose()
            .into_iter()
            .map(str::to_owned)
            .collect();
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        self.twilio.auth_tokens = Secrets::new(all);
        Ok(())
    }

    fn read_reconcile_password_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.reconcile.password_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: PathBuf::from(path),
            source,
        })?;
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or_default();
        self.reconcile.password = Secret::new(first);
        Ok(())
    }

    fn validate_reconcile(&self) -> Result<(), ConfigError> {
        let r = &self.reconcile;
        if !r.enabled() {
            return Ok(());
        }
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(r.api_base.starts_with("https://") || r.api_base.starts_with("http://")) {
            return bad(
                "reconcile.api_base must start with https:// (or http:// for a local simulator)",
            );
        }
        if r.password.0.is_none() {
            return bad(
                "reconcile.username is set but reconcile.password (or password_file) is empty",
            );
        }
        if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
            return bad("reconcile.requests_per_second must be a positive number");
        }
        if r.page_size == 0 || r.max_response_bytes == 0 {
            return bad("reconcile.page_size and reconcile.max_response_bytes must be positive");
        }
        if r.interval.is_zero() || r.max_interval < r.interval || r.request_timeout.is_zero() {
            return bad("reconcile.interval and request_timeout must be positive, and max_interval at least interval");
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_hardening()?;
        self.validate_reconcile()?;
        if let Some(url) = &self.http.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "http.public_url must start with http:// or https://, got {url:?}"
                )));
            }
        }
        for c in self.api.credentials.expose() {
            if !c.contains(':') {
                return Err(ConfigError::Invalid(
                    "api.credentials entries must be \"user:password\"".into(),
                ));
            }
        }
        if !self.storage.memory_only && self.storage.dir.is_none() {
            return Err(ConfigError::Invalid(
                "storage.dir is empty: give the directory for the journal and snapshots (default \"data\"), or set storage.memory_only = true to keep state in memory only, forgotten at every restart".into(),
            ));
        }
        if self.storage.max_group == 0 || self.storage.segment_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "storage.max_group must be positive and storage.segment_bytes at least 4096".into(),
            ));
        }
        if !(0..=19).contains(&self.storage.writer_nice) {
            return Err(ConfigError::Invalid(format!(
                "storage.writer_nice is {}: give a nice increment from 0 (as the rest of tally) to 19",
                self.storage.writer_nice
            )));
        }
        if self.http.max_body_bytes == 0 || self.api.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "http.max_body_bytes and api.max_page_size must be positive".into(),
            ));
        }
        self.validate_kafka()?;
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if c.role == ClusterRole::Single {
            return Ok(());
        }
        if !self.kafka.enabled() {
            return bad(format!(
                "cluster.role = {:?} needs kafka.brokers: the events topic is the cluster's only link",
                c.role.as_str()
            ));
        }
        if c.events_topic.trim().is_empty() || c.group_id.trim().is_empty() {
            return bad("cluster.events_topic and cluster.group_id must not be empty".into());
        }
        if c.events_topic == self.kafka.topic
            || Some(&c.events_topic) == self.kafka.resources_topic.as_ref()
        {
            return bad(
                "cluster.events_topic must differ from kafka.topic and kafka.resources_topic"
                    .into(),
            );
        }
        if c.produce_timeout.is_zero() || c.commit_interval.is_zero() || c.forward_timeout.is_zero()
        {
            return bad("cluster.produce_timeout, cluster.commit_interval and cluster.forward_timeout must be positive".into());
        }
        if c.role.aggregates() {
            match &c.advertise_url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                Some(u) => return bad(format!("cluster.advertise_url must start with http:// or https://, got {u:?}")),
                None => return bad("cluster.advertise_url is needed by aggregate processes: the URL the others forward queries to".into()),
            }
        }
        Ok(())
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if k.topic.trim().is_empty() {
            return bad("kafka.topic must not be empty".into());
        }
        if k.resources_topic.as_deref() == Some(k.topic.as_str()) {
            return bad("kafka.resources_topic must differ from kafka.topic".into());
        }
        if k.flush_interval.is_zero() || k.topic_setup_retry.is_zero() || k.stall_timeout.is_zero()
        {
            return bad(
                "kafka.flush_interval, kafka.topic_setup_retry and kafka.stall_timeout must be positive"
                    .into(),
            );
        }
        if k.partitions == 0
            || k.partitions < -1
            || k.replication_factor == 0
            || k.replication_factor < -1
        {
            return bad("kafka.partitions and kafka.replication_factor must be -1 (the broker's default) or positive".into());
        }
        for own in ["bootstrap.servers", "metadata.broker.list", "client.id"] {
            if k.librdkafka.get(own).is_some() {
                return bad(format!(
                    "kafka.librdkafka.\"{own}\" is set by tally: use kafka.brokers and kafka.client_id"
                ));
            }
        }
        if k.librdkafka
            .get("enable.idempotence")
            .is_some_and(|v| v != "true")
        {
            return bad("kafka.librdkafka.\"enable.idempotence\" must stay true: per-operation ordering depends on it".into());
        }
        for acks in ["acks", "request.required.acks"] {
            if k.librdkafka
                .get(acks)
                .is_some_and(|v| v != "all" && v != "-1")
            {
                return bad(format!("kafka.librdkafka.\"{acks}\" must stay all: records acknowledged by one replica only can be lost"));
            }
        }
        Ok(())
    }
}

/// The one table whose keys are not tally's own: librdkafka properties, passed through.
const PASSTHROUGH_SECTION: &str = "kafka";
const PASSTHROUGH_KEY: &str = "librdkafka";

fn passthrough_table(table: &mut toml::Table) -> Result<&mut toml::Table, ConfigError> {
    table
        .get_mut(PASSTHROUGH_SECTION)
        .and_then(|v| v.as_table_mut())
        .and_then(|t| t.get_mut(PASSTHROUGH_KEY))
        .and_then(|v| v.as_table_mut())
        .ok_or_else(|| ConfigError::Invalid("the defaults lack [kafka.librdkafka]".into()))
}

impl Settings {
    /// The bounds that keep hostile clients in check must be real bounds.
    fn validate_hardening(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if h.max_events_per_batch == 0 || h.max_inflight_callbacks == 0 || h.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "http.max_events_per_batch, http.max_inflight_callbacks and http.max_connections must be positive".into(),
            ));
        }
        if h.body_read_timeout.is_zero() || h.client_request_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "http.body_read_timeout and http.client_request_timeout must be positive: without them one slow client holds a connection forever".into(),
            ));
        }
        if h.admin_listen
            .is_some_and(|a| a == h.listen && a.port() != 0)
        {
            return Err(ConfigError::Invalid(
                "http.admin_listen must differ from http.listen".into(),
            ));
        }
        Ok(())
    }
}

/// Merge `user` into `base`, refusing keys that `base` (the documented defaults) lacks.
fn merge(base: &mut toml::Table, user: toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in user {
        let dotted = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            // librdkafka's own properties: any key, checked by librdkafka itself.
            (None, v) if prefix == format!("{PASSTHROUGH_SECTION}.{PASSTHROUGH_KEY}") => {
                base.insert(k, v);
            }
            (None, _) => return Err(ConfigError::UnknownKey(dotted)),
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &dotted)?,
            // A list may be written as one comma-separated string, as in the environment.
            (Some(slot @ toml::Value::Array(_)), toml::Value::String(list)) => {
                *slot = comma_list(&list);
            }
            (Some(slot), v) if slot.type_str() != v.type_str() => {
                return Err(ConfigError::Invalid(format!(
                    "{dotted}: expected {}, found {}",
                    slot.type_str(),
                    v.type_str()
                )))
            }
            (Some(slot), v) => *slot = v,
        }
    }
    Ok(())
}

/// `a, b,,c` as the list `["a", "b", "c"]`: items trimmed, empty ones dropped.
fn comma_list(raw: &str) -> toml::Value {
    toml::Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_owned()))
            .collect(),
    )
}

/// Parse an environment value as the type its default has.
fn env_value(old: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match old {
        toml::Value::Array(_) => comma_list(raw),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| "expected an integer".to_owned())?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| "expected a number".to_owned())?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .map_err(|_| "expected true or false".to_owned())?,
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_embedded_defaults_load_on_their_own() {
        let s = Settings::load(None, vec![]).unwrap();
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.retention.ttl, Duration::from_secs(7 * 86400));
        assert!(s.twilio.auth_tokens.is_empty());
        assert_eq!(s.http.public_url, None);
    }

    #[test]
    fn the_defaults_keep_state_in_a_local_data_directory_and_memory_only_must_be_asked_for() {
        let s = Settings::load(None, vec![]).unwrap();
        assert!(!s.storage.memory_only);
        assert_eq!(s.storage.data_dir(), Some(PathBuf::from("data")));
        let s = Settings::load(None, env(&[("TALLY_STORAGE__MEMORY_ONLY", "true")])).unwrap();
        assert_eq!(s.storage.data_dir(), None);
        let err = Settings::load(None, env(&[("TALLY_STORAGE__DIR", "")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.memory_only"), "{err}");
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_STORAGE__DIR", ""),
                ("TALLY_STORAGE__MEMORY_ONLY", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.storage.data_dir(), None);
    }

    #[test]
    fn the_hardening_defaults_are_bounded_and_documented_values() {
        let s = Settings::load(None, vec![]).unwrap();
        let h = &s.http;
        assert_eq!(h.admin_listen, None);
        assert!(h.callback_allow_networks.is_empty());
        assert_eq!(h.max_events_per_batch, 10_000);
        assert_eq!(h.max_inflight_callbacks, 256);
        assert_eq!(h.body_read_timeout, Duration::from_secs(5));
        assert_eq!(h.client_request_timeout, Duration::from_secs(5));
        assert_eq!(h.client_disconnect_timeout, Duration::from_secs(1));
        assert_eq!(h.keep_alive, Duration::from_secs(5));
        assert_eq!(h.max_connections, 25_000);
        assert!(s.privacy.keep_recipient_addresses);
    }

    #[test]
    fn networks_and_the_admin_address_parse_from_the_environment_and_junk_is_refused() {
        let s = Settings::load(
            None,
            env(&[
                (
                    "TALLY_HTTP__CALLBACK_ALLOW_NETWORKS",
                    "35.90.102.128/25, ::1",
                ),
                ("TALLY_HTTP__ADMIN_LISTEN", "127.0.0.1:9090"),
                ("TALLY_PRIVACY__KEEP_RECIPIENT_ADDRESSES", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.callback_allow_networks.0.len(), 2);
        assert_eq!(s.http.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(!s.privacy.keep_recipient_addresses);
        for (key, value, says) in [
            (
                "TALLY_HTTP__CALLBACK_ALLOW_NETWORKS",
                "35.90.102.128/33",
                "35.90.102.128/33",
            ),
            ("TALLY_HTTP__ADMIN_LISTEN", "localhost", "localhost"),
            (
                "TALLY_HTTP__MAX_INFLIGHT_CALLBACKS",
                "0",
                "max_inflight_callbacks",
            ),
            ("TALLY_HTTP__BODY_READ_TIMEOUT", "0s", "body_read_timeout"),
            ("TALLY_HTTP__ADMIN_LISTEN", "127.0.0.1:8080", "admin_listen"),
        ] {
            let err = Settings::load(None, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{key}={value}: {err}");
        }
    }

    #[test]
    fn environment_overrides_defaults_with_typed_values_and_comma_lists() {
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_HTTP__LISTEN", "127.0.0.1:0"),
                ("TALLY_TWILIO__AUTH_TOKENS", "new, old"),
                ("TALLY_HTTP__MAX_BODY_BYTES", "1000"),
                ("TALLY_HTTP__TRUST_FORWARDED_HEADERS", "true"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.twilio.auth_tokens.expose(), vec!["new", "old"]);
        assert_eq!(s.http.max_body_bytes, 1000);
        assert!(s.http.trust_forwarded_headers);
    }

    #[test]
    fn the_aggregators_limits_come_from_ingest_retention_and_privacy() {
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_INGEST__MAX_HELD_ATTEMPTS", "5"),
                ("TALLY_INGEST__HELD_TTL", "2s"),
                ("TALLY_RETENTION__MAX_RESOURCES", "7"),
                ("TALLY_PRIVACY__KEEP_RECIPIENT_ADDRESSES", "false"),
            ]),
        )
        .unwrap();
        let limits = s.limits();
        assert_eq!(limits.max_held, 5);
        assert_eq!(limits.held_ttl_ms, 2_000);
        assert_eq!(limits.max_resources, 7);
        assert!(!limits.keep_recipient_addresses);
    }

    #[test]
    fn the_journal_writers_nice_increment_is_five_by_default_and_held_to_0_through_19() {
        let s = Settings::load(None, vec![]).unwrap();
        assert_eq!(s.storage.writer_nice, 5);
        for ok in ["0", "19"] {
            let s = Settings::load(None, env(&[("TALLY_STORAGE__WRITER_NICE", ok)])).unwrap();
            assert_eq!(s.storage.writer_nice.to_string(), ok);
        }
        for bad in ["-1", "20"] {
            let err = Settings::load(None, env(&[("TALLY_STORAGE__WRITER_NICE", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("storage.writer_nice") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let dir = std::env::temp_dir().join(format!("tally-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[http]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
        let err = Settings::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(err.contains("http.listen_addr"), "{err}");
        let err = Settings::load(None, env(&[("TALLY_HTTP__NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.nope"), "{err}");
    }

    #[test]
    fn the_reconcile_password_comes_from_the_environment_or_a_file_and_is_never_debug_printed() {
        // Off by default.
        let off = Settings::load(None, vec![]).unwrap();
        assert!(off.reconcile.config(off.retention.ttl).is_none());
        // From the environment, commas and all (a password is one string, not a list).
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_RECONCILE__USERNAME", "SKkey"),
                ("TALLY_RECONCILE__PASSWORD", "pass,word-secret"),
                ("TALLY_RECONCILE__REQUESTS_PER_SECOND", "2.5"),
            ]),
        )
        .unwrap();
        let c = s.reconcile.config(s.retention.ttl).expect("on");
        assert_eq!(c.password.expose_secret(), "pass,word-secret");
        assert_eq!(c.plan.requests_per_second, 2.5);
        assert_eq!(c.plan.lookback_ms, s.retention.ttl.as_millis() as u64);
        assert!(!format!("{s:?}{c:?}").contains("word-secret"));
        // From a file: its first line that is not a comment.
        let dir = std::env::temp_dir().join(format!("tally-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("password");
        std::fs::write(&f, "# the key's secret\nfile-secret\n").unwrap();
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_RECONCILE__USERNAME", "SKkey"),
                ("TALLY_RECONCILE__PASSWORD_FILE", f.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let c = s.reconcile.config(s.retention.ttl).expect("on");
        assert_eq!(c.password.expose_secret(), "file-secret");
        // A username without a password, or a budget of zero, is refused with the key named.
        for (key, value, says) in [
            ("TALLY_RECONCILE__PASSWORD", "", "reconcile.password"),
            (
                "TALLY_RECONCILE__REQUESTS_PER_SECOND",
                "0",
                "reconcile.requests_per_second",
            ),
            (
                "TALLY_RECONCILE__API_BASE",
                "comms.twilio.com",
                "reconcile.api_base",
            ),
        ] {
            let mut e = env(&[
                ("TALLY_RECONCILE__USERNAME", "SKkey"),
                ("TALLY_RECONCILE__PASSWORD", "secret"),
            ]);
            e.push((key.to_owned(), value.to_owned()));
            let err = Settings::load(None, e).unwrap_err().to_string();
            assert!(err.contains(says), "{key}={value:?}: {err}");
        }
    }

    #[test]
    fn tokens_are_read_from_a_file_and_never_debug_printed() {
        let dir = std::env::temp_dir().join(format!("tally-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "# rotation\nsecret-token-b\n\n").unwrap();
        let s = Settings::load(
            None,
            env(&[
                ("TALLY_TWILIO__AUTH_TOKENS", "secret-token-a"),
                ("TALLY_TWILIO__AUTH_TOKENS_FILE", f.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.twilio.auth_tokens.expose(),
            vec!["secret-token-a", "secret-token-b"]
        );
        assert!(!format!("{s:?}").contains("secret-token"));
    }

    #[test]
    fn a_bad_duration_says_which_value() {
        let err = Settings::load(None, env(&[("TALLY_RETENTION__TTL", "seven days")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seven days"), "{err}");
    }

    fn write_config(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-kcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f
    }

    #[test]
    fn kafka_is_off_by_default_with_the_documented_topic_and_interval() {
        let s = Settings::load(None, vec![]).unwrap();
        assert!(!s.kafka.enabled());
        assert_eq!(s.kafka.topic, "tally.operations");
        assert_eq!(s.kafka.flush_interval, Duration::from_millis(100));
        assert_eq!(s.kafka.resources_topic, None);
        assert!(s.kafka.librdkafka.0.is_empty());
        let s = Settings::load(None, env(&[("TALLY_KAFKA__BROKERS", "k1:9092, k2:9092")])).unwrap();
        assert_eq!(s.kafka.brokers, vec!["k1:9092", "k2:9092"]);
    }

    #[test]
    fn a_list_in_a_file_may_be_one_comma_separated_string_as_in_the_environment() {
        let f = write_config("brokers.toml", "[kafka]\nbrokers = \"h1:9092, h2:9092,\"\n");
        let from_file = Settings::load(Some(&f), vec![]).unwrap();
        assert_eq!(from_file.kafka.brokers, vec!["h1:9092", "h2:9092"]);
        let from_env =
            Settings::load(None, env(&[("TALLY_KAFKA__BROKERS", "h1:9092,h2:9092")])).unwrap();
        assert_eq!(from_env.kafka.brokers, from_file.kafka.brokers);
        let f = write_config("array.toml", "[kafka]\nbrokers = [\"h1:9092\"]\n");
        let from_array = Settings::load(Some(&f), vec![]).unwrap();
        assert_eq!(from_array.kafka.brokers, vec!["h1:9092"]);
        // Anything else is still refused, naming the key.
        let f = write_config("number.toml", "[kafka]\nbrokers = 9092\n");
        let err = Settings::load(Some(&f), vec![]).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid settings: kafka.brokers: expected array, found integer"
        );
    }

    #[test]
    fn librdkafka_options_pass_through_from_a_file_and_the_environment_and_never_debug_print() {
        let f = write_config(
            "kafka.toml",
            concat!(
                "[kafka]\nbrokers = [\"k:9092\"]\n",
                "[kafka.librdkafka]\n",
                "\"security.protocol\" = \"SASL_SSL\"\n",
                "compression.type = \"lz4\"\n",
                "\"linger.ms\" = 20\n",
                "\"sasl.password\" = \"from-file\"\n",
            ),
        );
        let s = Settings::load(
            Some(&f),
            env(&[("TALLY_KAFKA__LIBRDKAFKA__SASL_PASSWORD", "hunter2-secret")]),
        )
        .unwrap();
        let o = &s.kafka.librdkafka;
        assert_eq!(o.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(o.get("compression.type"), Some("lz4"));
        assert_eq!(o.get("linger.ms"), Some("20"));
        assert_eq!(o.get("sasl.password"), Some("hunter2-secret"));
        let shown = format!("{s:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("from-file"),
            "{shown}"
        );
    }

    #[test]
    fn options_that_would_break_ordering_or_shadow_tallys_own_keys_are_refused() {
        for (prop, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("bootstrap.servers", "x:1"),
            ("client.id", "other"),
        ] {
            let f = write_config(
                "bad-kafka.toml",
                &format!("[kafka.librdkafka]\n\"{prop}\" = \"{value}\"\n"),
            );
            let err = Settings::load(Some(&f), vec![]).unwrap_err().to_string();
            assert!(err.contains(prop), "{prop}: {err}");
        }
        let err = Settings::load(None, env(&[("TALLY_KAFKA__PARTITIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
        let err = Settings::load(None, env(&[("TALLY_KAFKA__TOPICS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.topics"), "{err}");
    }
}
