//! Delivery like Svix: at least once, by several concurrent senders.
//!
//! Events are emitted in Clerk's order at an even pace over the run; emitting one applies its
//! change to the Backend API stand-in (Clerk's truth moves first, its webhook follows). Each
//! delivery may be held back for a while (so later events overtake it), duplicated (the same
//! `svix-id` sent again later), or withheld entirely (Svix gave up: only reconcile repairs it).
//! Every attempt is signed afresh; any answer but 2xx within 15 s is retried on Svix's schedule,
//! compressed (8 attempts within about a minute), after which the delivery is given up.

use crate::model::{Change, Event};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stand_ins::ClerkApiStandIn;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Svix's schedule (now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), compressed.
pub const RETRY_SCHEDULE_MS: [u64; 8] = [0, 50, 1_000, 3_000, 6_000, 10_000, 15_000, 20_000];

/// What happened to one event.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub attempts: u32,
    /// Answers other than 2xx, and attempts that got no answer in time.
    pub failures: u32,
    pub duplicates: u32,
    pub delayed: bool,
    pub withheld: bool,
    /// Every attempt of some copy failed.
    pub gave_up: bool,
    /// A copy was answered 2xx.
    pub delivered: bool,
}

/// How deliveries misbehave.
#[derive(Debug, Clone)]
pub struct Plan {
    pub senders: usize,
    pub duplicate: f64,
    pub delay: f64,
    pub max_delay: Duration,
    pub withhold: f64,
    /// Decides which deliveries misbehave, and how.
    pub seed: u64,
    /// The events are emitted evenly over this.
    pub span: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            senders: 8,
            duplicate: 0.05,
            delay: 0.15,
            max_delay: Duration::from_secs(8),
            withhold: 0.005,
            seed: 0,
            span: Duration::from_secs(60),
        }
    }
}

/// Shared counters and the organizations that exist in Clerk now (for users' traffic).
#[derive(Debug, Default)]
pub struct Live {
    pub orgs: Mutex<BTreeSet<String>>,
    /// Organizations watchers follow: users' traffic goes there half the time.
    pub hot: Mutex<Vec<String>>,
    pub attempts: AtomicU64,
    pub emitted: AtomicU64,
    pub stop: AtomicBool,
}

/// Applies an event's change to the Backend API stand-in.
pub fn apply(api: &ClerkApiStandIn, live: &Live, change: &Change) {
    match change {
        Change::PutUser(u) => api.put_user(u.json()),
        Change::RemoveUser(id, mems) => {
            api.remove_user(id);
            for m in mems {
                api.remove_membership(m);
            }
        }
        Change::PutOrg(o) => {
            api.put_org(o.json());
            live.orgs.lock().unwrap().insert(o.id.clone());
        }
        Change::RemoveOrg(id, mems) => {
            api.remove_org(id);
            for m in mems {
                api.remove_membership(m);
            }
            live.orgs.lock().unwrap().remove(id);
        }
        Change::PutMembership(m) => api.put_membership(m.json()),
        Change::RemoveMembership(m) => api.remove_membership(&m.id),
    }
}

/// Emits `events` over `span` and delivers them; returns when every delivery ended.
pub async fn run(
    events: Arc<Vec<Event>>,
    api: Arc<ClerkApiStandIn>,
    live: Arc<Live>,
    gateway_url: String,
    secret: String,
    plan: Plan,
) -> Vec<Outcome> {
    let (seed, span) = (plan.seed, plan.span);
    let outcomes = Arc::new(Mutex::new(vec![Outcome::default(); events.len()]));
    let senders = Arc::new(Semaphore::new(plan.senders));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_de11);
    let start = Instant::now();
    let pace = span.as_secs_f64() / events.len().max(1) as f64;
    let mut tasks = Vec::with_capacity(events.len());
    for e in events.iter() {
        if live.stop.load(Relaxed) {
            break;
        }
        let due = start + Duration::from_secs_f64(pace * e.seq as f64);
        tokio::time::sleep_until(due.into()).await;
        apply(&api, &live, &e.change);
        live.emitted.fetch_add(1, Relaxed);
        // Decided per event in order, so a seed replays the same plan.
        let withheld = rng.random_bool(plan.withhold);
        let delay = rng
            .random_bool(plan.delay)
            .then(|| plan.max_delay.mul_f64(rng.random::<f64>()));
        let duplicate = rng
            .random_bool(plan.duplicate)
            .then(|| plan.max_delay.mul_f64(rng.random::<f64>()));
        {
            let mut o = outcomes.lock().unwrap();
            let o = &mut o[e.seq];
            o.withheld = withheld;
            o.delayed = delay.is_some();
            o.duplicates = duplicate.is_some() as u32;
        }
        if withheld {
            continue;
        }
        for wait in [Some(delay.unwrap_or_default()), duplicate]
            .into_iter()
            .flatten()
        {
            let ctx = Sender {
                http: http.clone(),
                url: format!("{gateway_url}/clerk"),
                secret: secret.clone(),
                senders: Arc::clone(&senders),
                outcomes: Arc::clone(&outcomes),
                live: Arc::clone(&live),
            };
            let events = Arc::clone(&events);
            let seq = e.seq;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                ctx.deliver(&events[seq]).await;
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let done = outcomes.lock().unwrap();
    done.clone()
}

struct Sender {
    http: reqwest::Client,
    url: String,
    secret: String,
    senders: Arc<Semaphore>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    live: Arc<Live>,
}

impl Sender {
    /// One copy of a delivery, with its retries.
    async fn deliver(&self, e: &Event) {
        for wait in RETRY_SCHEDULE_MS {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let ok = {
                let _slot = self.senders.acquire().await.expect("open");
                self.live.attempts.fetch_add(1, Relaxed);
                self.attempt(e).await
            };
            let mut o = self.outcomes.lock().unwrap();
            let o = &mut o[e.seq];
            o.attempts += 1;
            if ok {
                o.delivered = true;
                return;
            }
            o.failures += 1;
        }
        self.outcomes.lock().unwrap()[e.seq].gave_up = true;
    }

    async fn attempt(&self, e: &Event) -> bool {
        let Ok(headers) = vbase_stack::sign_webhook(&self.secret, &e.svix_id, &e.body) else {
            return false;
        };
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(e.body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        matches!(req.send().await, Ok(r) if r.status().is_success())
    }
}
