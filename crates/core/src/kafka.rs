//! Kafka, through rskafka: connecting, creating topics, and the key -> partition mapping.
//!
//! rskafka has no consumer groups and no offset commits; consumers here keep their positions in
//! PostgreSQL (see `db::results`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::BackoffConfig;
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::config::{KafkaSettings, SaslMechanism};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rskafka::client::error::Error),
    #[error("kafka topic {0} has no partitions")]
    NoPartitions(String),
    #[error("kafka request got no answer within {0:?}")]
    TimedOut(Duration),
    #[error("kafka: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Bounds one request. rskafka has no request timeout: a broker that stops answering (without
/// closing the connection) would otherwise hold the caller, and any transaction it has open,
/// for good.
pub async fn bounded<T, E: Into<KafkaError>>(
    limit: Duration,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, KafkaError> {
    match tokio::time::timeout(limit, request).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => Err(KafkaError::TimedOut(limit)),
    }
}

impl KafkaError {
    /// The broker answered but the answer could not be read: a record batch in a format, codec
    /// or range this client cannot decode. Asking again gets the same bytes.
    pub fn is_undecodable(&self) -> bool {
        use rskafka::client::error::{Error, RequestError};
        match self {
            KafkaError::Client(Error::InvalidResponse(_)) => true,
            KafkaError::Client(Error::Request(r)) => matches!(
                r,
                RequestError::ReadError(_) | RequestError::ReadVersionedError(_) | RequestError::TooMuchData { .. }
            ),
            _ => false,
        }
    }

    pub fn is_offset_out_of_range(&self) -> bool {
        matches!(
            self,
            KafkaError::Client(rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                ..
            })
        )
    }
}

/// The codec vap's producers use (`kafka.compression`).
pub fn compression(settings: &KafkaSettings) -> rskafka::client::partition::Compression {
    use crate::config::KafkaCompression as C;
    use rskafka::client::partition::Compression;
    match settings.compression {
        C::None => Compression::NoCompression,
        C::Gzip => Compression::Gzip,
        C::Snappy => Compression::Snappy,
        C::Lz4 => Compression::Lz4,
        C::Zstd => Compression::Zstd,
    }
}

/// A connected client with cached per-partition clients.
pub struct Kafka {
    client: Client,
    nodelay: bool,
    timeout: Duration,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    /// Each topic's partition ids as the broker reported them (not as configured).
    topics: Mutex<HashMap<String, Vec<i32>>>,
}

fn backoff(settings: &KafkaSettings) -> BackoffConfig {
    // rskafka's default never gives up; a deadline turns a dead broker into an error we handle.
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_millis(settings.request_deadline_ms)),
    }
}

/// A client builder with the settings' login (SASL) and TLS.
pub fn builder(settings: &KafkaSettings) -> Result<ClientBuilder, KafkaError> {
    let mut builder = ClientBuilder::new(settings.brokers.clone()).client_id("vap").backoff_config(backoff(settings));
    let credentials = || Credentials::new(settings.sasl_username.clone(), settings.sasl_password.expose().to_string());
    builder = match settings.sasl_mechanism {
        SaslMechanism::None => builder,
        SaslMechanism::Plain => builder.sasl_config(SaslConfig::Plain(credentials())),
        SaslMechanism::ScramSha256 => builder.sasl_config(SaslConfig::ScramSha256(credentials())),
        SaslMechanism::ScramSha512 => builder.sasl_config(SaslConfig::ScramSha512(credentials())),
    };
    if let Some(ca) = &settings.tls_ca_file {
        builder = builder.tls_config(Arc::new(crate::tls::client_config(Some(ca))?));
    }
    Ok(builder)
}

impl Kafka {
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let client = bounded(timeout, builder(settings)?.build()).await?;
        if settings.tcp_nodelay {
            sweep_nodelay().await;
            spawn_nodelay_sweeper();
        }
        Ok(Self {
            client,
            nodelay: settings.tcp_nodelay,
            timeout,
            partitions: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// The limit of one request to the broker ([`bounded`]).
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Creates `topic` with `partitions` partitions unless it exists; returns its partition ids
    /// (the broker's, remembered: a topic made elsewhere may have another count).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32, replication: i16) -> Result<Vec<i32>, KafkaError> {
        if let Some(known) = self.topics.lock().await.get(topic) {
            return Ok(known.clone());
        }
        let ids = self.find_or_create_topic(topic, partitions, replication).await?;
        self.topics.lock().await.insert(topic.to_string(), ids.clone());
        Ok(ids)
    }

    async fn find_or_create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
    ) -> Result<Vec<i32>, KafkaError> {
        if let Some(found) = self.topic_partitions(topic).await? {
            return Ok(found);
        }
        let controller = self.client.controller_client()?;
        match bounded(self.timeout, controller.create_topic(topic, partitions, replication, 5_000)).await {
            Ok(()) => tracing::info!(topic, partitions, "topic created"),
            Err(KafkaError::Client(rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
                ..
            })) => {}
            Err(e) => return Err(e),
        }
        // Metadata can lag a fresh create for a moment.
        for _ in 0..50 {
            if let Some(found) = self.topic_partitions(topic).await? {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(KafkaError::NoPartitions(topic.to_string()))
    }

    async fn topic_partitions(&self, topic: &str) -> Result<Option<Vec<i32>>, KafkaError> {
        let topics = bounded(self.timeout, self.client.list_topics()).await?;
        Ok(topics.into_iter().find(|t| t.name == topic).and_then(|t| {
            let mut ids: Vec<i32> = t.partitions.into_iter().collect();
            ids.sort_unstable();
            (!ids.is_empty()).then_some(ids)
        }))
    }

    /// A cached client for one partition.
    pub async fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>, KafkaError> {
        let key = (topic.to_string(), partition);
        if let Some(p) = self.partitions.lock().await.get(&key) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(
            bounded(self.timeout, self.client.partition_client(topic, partition, UnknownTopicHandling::Retry)).await?,
        );
        if self.nodelay {
            sweep_nodelay().await;
        }
        Ok(Arc::clone(self.partitions.lock().await.entry(key).or_insert(p)))
    }
}

/// Kafka's default partitioner (murmur2 of the key, positive, modulo the partition count), so
/// vap places a key where any standard Kafka producer would.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A lazily (re)connected client: the relay starts and serves the database side while the
/// broker is still down, and connects (creating vap's topics) once it answers.
pub struct KafkaLink {
    settings: KafkaSettings,
    connected: Mutex<Option<Arc<Kafka>>>,
}

impl KafkaLink {
    pub fn new(settings: KafkaSettings) -> Self {
        Self { settings, connected: Mutex::new(None) }
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Waits until the broker answers and `topic` exists (creating it when missing), retrying
    /// with back-off so the caller's process keeps serving meanwhile. `None` on shutdown.
    pub async fn wait_for_topic(
        &self,
        topic: &str,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Vec<i32>> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let attempt = async {
                let k = self.get().await?;
                k.ensure_topic(topic, self.settings.partitions, self.settings.replication_factor).await
            };
            match attempt.await {
                Ok(p) => return Some(p),
                Err(e) => tracing::warn!(error = %e, topic, "waiting for kafka"),
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// One record, with `headers`, to the partition its key maps to (rare messages: control
    /// records). Returns its offset.
    pub async fn produce_keyed(
        &self,
        topic: &str,
        key: &[u8],
        value: Vec<u8>,
        headers: std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<i64, KafkaError> {
        let kafka = self.get().await?;
        let ids = kafka.ensure_topic(topic, self.settings.partitions, self.settings.replication_factor).await?;
        let partition = partition_for_key(key, ids.len() as i32);
        let record = rskafka::record::Record {
            key: Some(key.to_vec()),
            value: Some(value),
            headers,
            timestamp: chrono::Utc::now(),
        };
        let client = kafka.partition(topic, partition).await?;
        let offsets =
            bounded(kafka.request_timeout(), client.produce(vec![record], compression(&self.settings))).await?;
        offsets.first().copied().ok_or_else(|| KafkaError::NoPartitions(topic.to_string()))
    }

    /// The connected client, connecting and ensuring vap's topics first when needed.
    pub async fn get(&self) -> Result<Arc<Kafka>, KafkaError> {
        let mut slot = self.connected.lock().await;
        if let Some(k) = slot.as_ref() {
            return Ok(Arc::clone(k));
        }
        let kafka = Kafka::connect(&self.settings).await?;
        let s = &self.settings;
        for topic in s.topics() {
            kafka.ensure_topic(topic, s.partitions, s.replication_factor).await?;
        }
        tracing::info!(brokers = ?s.brokers, "connected to kafka");
        let kafka = Arc::new(kafka);
        *slot = Some(Arc::clone(&kafka));
        Ok(kafka)
    }
}

/// Sets TCP_NODELAY on every TCP socket this process holds, returning how many it changed.
///
/// rskafka never sets it, and Nagle's algorithm against the broker's delayed ACK stalls produce
/// requests of roughly 14-28 KB by about 40 ms each (measured: docs/BENCHMARKS.md). rskafka
/// does not expose its sockets, so we find them among our own descriptors. Every other TCP
/// socket vap opens (PostgreSQL, HTTP) already uses TCP_NODELAY, so sweeping all is harmless.
pub fn set_nodelay_on_tcp_sockets() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut changed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<libc::c_int>().ok()) else { continue };
        // Only TCP stream sockets: SO_TYPE fails on non-sockets, SO_PROTOCOL tells TCP apart.
        let getopt = |level, name| crate::sys::socket_option(fd, level, name);
        if getopt(libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
            || getopt(libc::SOL_SOCKET, libc::SO_PROTOCOL) != Some(libc::IPPROTO_TCP)
            || getopt(libc::IPPROTO_TCP, libc::TCP_NODELAY) != Some(0)
        {
            continue;
        }
        if crate::sys::set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1) {
            changed += 1;
        }
    }
    changed
}

/// The sweep reads /proc: off the runtime's threads.
async fn sweep_nodelay() -> usize {
    tokio::task::spawn_blocking(set_nodelay_on_tcp_sockets).await.unwrap_or(0)
}

/// Keeps sweeping, so connections rskafka re-opens after a broker restart get it too.
fn spawn_nodelay_sweeper() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let n = sweep_nodelay().await;
                if n > 0 {
                    tracing::debug!(sockets = n, "TCP_NODELAY set on new connections");
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_sets_nodelay_on_open_tcp_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!stream.nodelay().unwrap(), "Linux starts sockets with Nagle on");
        assert!(set_nodelay_on_tcp_sockets() >= 1);
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's own Utils test (as signed ints).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
