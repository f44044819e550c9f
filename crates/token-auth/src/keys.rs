//! Verification keys: loaded from a JWKS (URL or file), cached, refreshed in the background.
//!
//! Reads are synchronous (the interceptor never waits on the network). An unknown `kid` asks the
//! background task for a re-fetch; the task performs at most one fetch per
//! [`KeyStoreOptions::min_refetch_interval`], so a flood of unknown kids costs a bounded number of
//! fetches. A call may wait for that fetch ([`KeyStore::wait_for`]): every call waiting shares it,
//! and it is the last one a call waits for. When the source is down, the keys already loaded
//! keep working.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched with HTTP GET.
    Url(String),
    /// Read from a file (for example a mounted ConfigMap); re-read on every refresh.
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Url(u) => write!(f, "{u}"),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Timing of the background refresh.
#[derive(Debug, Clone, Copy)]
pub struct KeyStoreOptions {
    /// Regular refresh period.
    pub refresh_interval: Duration,
    /// Minimum time between two fetches (bounds re-fetches caused by unknown kids).
    pub min_refetch_interval: Duration,
    /// HTTP timeout of one fetch.
    pub fetch_timeout: Duration,
    /// Calls that may wait at once for a fetch to bring their unknown `kid`; more are refused
    /// at once (each waiting call holds its request, so a flood of forged kids is bounded).
    pub max_waiting_calls: usize,
}

impl Default for KeyStoreOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_waiting_calls: 1024,
        }
    }
}

/// A usable verification key and the one algorithm it verifies.
pub(crate) struct StoredKey {
    pub key: DecodingKey,
    pub alg: Algorithm,
    /// The token subjects (`sub`) this key may sign, from its JWK's [`SUBJECTS_MEMBER`]:
    /// `None` when the JWK has no such member. Service keys must have one (an internal
    /// caller's key signs its own subject only); Clerk's keys sign any user.
    pub subjects: Option<Vec<String>>,
}

/// The JWK member that binds a service key to the subjects it may sign:
/// `"subjects": ["webhook-gateway"]`. RFC 7517 lets a JWK carry members of its own, which
/// other implementations ignore.
pub const SUBJECTS_MEMBER: &str = "subjects";

/// Whether `subject` can be a service token's `sub`: 1 to 100 printable ASCII characters.
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty() && subject.len() <= 100 && subject.chars().all(|c| c.is_ascii_graphic())
}

/// The subjects a JWK is bound to: `None` without the member; an empty list (bound to
/// nothing, so it signs no token) when the member is not a list of valid subjects.
fn bound_subjects(jwk: &serde_json::Value) -> Option<Vec<String>> {
    let member = jwk.get(SUBJECTS_MEMBER)?;
    let list: Option<Vec<String>> = member.as_array().and_then(|items| {
        items
            .iter()
            .map(|s| s.as_str().filter(|s| valid_subject(s)).map(str::to_owned))
            .collect()
    });
    Some(list.unwrap_or_default())
}

/// Cached keys by `kid`.
pub struct KeyStore {
    source: KeySource,
    allowed: Vec<Algorithm>,
    keys: RwLock<Arc<HashMap<String, Arc<StoredKey>>>>,
    wake: Notify,
    fetches: AtomicU64,
    /// Fetches started and finished, so a call can wait for the next one.
    progress: tokio::sync::watch::Sender<FetchProgress>,
    /// Room for calls waiting for a fetch ([`KeyStoreOptions::max_waiting_calls`]).
    waiting: tokio::sync::Semaphore,
    options: KeyStoreOptions,
    /// Whether every key must be bound to its subjects (service keys): a key that is not is
    /// kept (its tokens are refused with a reason) and named in a warning at each load.
    subjects_required: bool,
    /// When keys were last loaded (seconds since the epoch; 0: never). A refresh that fails
    /// keeps the keys loaded before, so an operator's removal of a key waits for a load.
    loaded_at: AtomicU64,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("source", &self.source)
            .field("keys", &self.key_ids())
            .finish()
    }
}

impl KeyStore {
    /// Creates the store and spawns its refresh task (needs a Tokio runtime). Keys whose
    /// algorithm is not in `allowed` are ignored.
    pub fn spawn(
        source: KeySource,
        allowed: Vec<Algorithm>,
        options: KeyStoreOptions,
    ) -> Arc<Self> {
        Self::spawn_with(source, allowed, options, false)
    }

    /// Like [`KeyStore::spawn`], for keys that must each be bound to the subjects they may
    /// sign ([`SUBJECTS_MEMBER`]).
    pub fn spawn_bound(
        source: KeySource,
        allowed: Vec<Algorithm>,
        options: KeyStoreOptions,
    ) -> Arc<Self> {
        Self::spawn_with(source, allowed, options, true)
    }

    fn spawn_with(
        source: KeySource,
        allowed: Vec<Algorithm>,
        options: KeyStoreOptions,
        subjects_required: bool,
    ) -> Arc<Self> {
        let store = Arc::new(Self {
            source,
            allowed,
            keys: RwLock::new(Arc::new(HashMap::new())),
            wake: Notify::new(),
            fetches: AtomicU64::new(0),
            progress: tokio::sync::watch::channel(FetchProgress::default()).0,
            waiting: tokio::sync::Semaphore::new(options.max_waiting_calls),
            options,
            subjects_required,
            loaded_at: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move { refresh_loop(weak).await });
        store
    }

    /// The key for `kid`, if loaded. A miss asks the refresh task for a (throttled) re-fetch.
    pub(crate) fn get(&self, kid: &str) -> Option<Arc<StoredKey>> {
        let found = self.keys.read().ok().and_then(|m| m.get(kid).cloned());
        if found.is_none() {
            self.wake.notify_one();
        }
        found
    }

    /// Waits for the next fetch to load `kid` (a key rotated in since the last fetch): the
    /// first fetch that starts after this call, which the throttle allows at most
    /// [`KeyStoreOptions::min_refetch_interval`] after the previous one started. Calls waiting
    /// at once share that fetch. `None` when that fetch does not bring the key, when it cannot
    /// finish within `bound` (the caller's deadline; at most the throttle plus one fetch's
    /// timeout), or when [`KeyStoreOptions::max_waiting_calls`] calls wait already; the last
    /// two answer at once.
    pub(crate) async fn wait_for(&self, kid: &str, bound: Duration) -> Option<Arc<StoredKey>> {
        let lookup = || self.keys.read().ok().and_then(|m| m.get(kid).cloned());
        let Ok(_room) = self.waiting.try_acquire() else {
            return lookup();
        };
        let arrived = Instant::now();
        let mut progress = self.progress.subscribe();
        let (target, next_start) = {
            let p = progress.borrow_and_update();
            let next = p
                .last_start
                .map_or(arrived, |t| t + self.options.min_refetch_interval);
            (p.started + 1, next.max(arrived))
        };
        let longest = self.options.min_refetch_interval + self.options.fetch_timeout;
        let deadline = arrived + bound.min(longest);
        if next_start >= deadline {
            return lookup();
        }
        loop {
            if let Some(key) = lookup() {
                return Some(key);
            }
            if progress.borrow_and_update().finished >= target {
                return None;
            }
            self.wake.notify_one();
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => continue,
                _ => return lookup(),
            }
        }
    }

    /// Ids of the keys currently loaded, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .keys
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Whether at least one key is loaded.
    pub fn is_ready(&self) -> bool {
        self.keys.read().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// When keys were last loaded (seconds since the epoch), if ever.
    pub fn loaded_at(&self) -> Option<u64> {
        Some(self.loaded_at.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// How many keys are loaded.
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|m| m.len()).unwrap_or(0)
    }

    /// How many fetches were attempted so far (successful or not).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Waits until keys are loaded or `timeout` passes; returns whether keys are loaded.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_ready()
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<usize, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = match &self.source {
            KeySource::Url(url) => {
                let resp = http
                    .get(url)
                    .timeout(self.options.fetch_timeout)
                    .send()
                    .await
                    .map_err(|e| format!("GET failed: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("GET answered {}", resp.status()));
                }
                capped_body::read(resp, MAX_JWKS_BYTES)
                    .await
                    .map_err(|e| format!("JWKS {e}"))?
                    .to_vec()
            }
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("reading file: {e}"))?,
        };
        let parsed = parse_jwks(&body, &self.allowed)?;
        if parsed.is_empty() {
            return Err("JWKS holds no usable key".to_owned());
        }
        let n = parsed.len();
        if self.subjects_required {
            for (kid, key) in &parsed {
                if key.subjects.as_ref().is_none_or(Vec::is_empty) {
                    tracing::warn!(source = %self.source, kid, "service key bound to no subject (its JWK needs \"{SUBJECTS_MEMBER}\": [\"<sub>\", ...]): tokens it signs are refused");
                }
            }
        }
        if let Ok(mut guard) = self.keys.write() {
            *guard = Arc::new(parsed);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.loaded_at.store(now, Ordering::Relaxed);
        Ok(n)
    }
}

/// How far the refresh task has come: fetches started and finished (numbered from 1), and when
/// the last one started (the throttle counts from there).
#[derive(Debug, Clone, Copy, Default)]
struct FetchProgress {
    started: u64,
    finished: u64,
    last_start: Option<Instant>,
}

/// The largest JWKS document accepted (Clerk's holds a few keys of under 1 KiB each).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Whether `url` may serve keys: `https`, or `http` to this machine (development stand-ins).
pub fn acceptable_jwks_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        _ => false,
    }
}

/// A JWKS document, keys left unparsed so that one key of an unknown kind spoils nothing.
#[derive(serde::Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// Turns a JWKS document into usable keys, keeping only keys with a `kid` and an allowed
/// algorithm.
pub(crate) fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
) -> Result<HashMap<String, Arc<StoredKey>>, String> {
    let raw: RawJwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = HashMap::new();
    for value in raw.keys {
        let subjects = bound_subjects(&value);
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        // The algorithm a key verifies: its `alg` when present, else implied by its type.
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
            | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(p))
            | (None, AlgorithmParameters::OctetKeyPair(p))
                if p.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            _ => continue,
        };
        if !allowed.contains(&alg) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, Arc::new(StoredKey { key, alg, subjects }));
        }
    }
    Ok(out)
}

async fn refresh_loop(store: std::sync::Weak<KeyStore>) {
    // A JWKS endpoint that redirects is refused, not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut last_fetch: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(s) = store.upgrade() else { return };
        let options = s.options;
        // Throttle: never fetch more often than min_refetch_interval.
        if let Some(at) = last_fetch {
            let next = at + options.min_refetch_interval;
            if Instant::now() < next {
                drop(s);
                tokio::time::sleep_until(next).await;
                continue;
            }
        }
        let started = Instant::now();
        last_fetch = Some(started);
        s.progress.send_modify(|p| {
            p.started += 1;
            p.last_start = Some(started);
        });
        let fetched = s.fetch(&http).await;
        s.progress.send_modify(|p| p.finished += 1);
        match fetched {
            Ok(n) => {
                if failures > 0 {
                    tracing::info!(source = %s.source, keys = n, "verification keys loaded again");
                }
                failures = 0;
            }
            Err(reason) => {
                failures += 1;
                tracing::warn!(source = %s.source, %reason, failures, "could not refresh verification keys; keeping the ones loaded");
            }
        }
        // Until the first keys load, retry on the throttle interval; afterwards, on the period
        // or when an unknown kid wakes us.
        let wait = if s.is_ready() {
            options.refresh_interval
        } else {
            options.min_refetch_interval
        };
        let notified = {
            let s2 = Arc::clone(&s);
            async move { s2.wake.notified().await }
        };
        drop(s);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {}
        }
    }
}
