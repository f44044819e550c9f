//! Watchers following workspaces (`WatchWorkspace`) and their first channel (`WatchChannel`),
//! reconnecting with their last resume token whenever a stream breaks (a killed service, a
//! database restart) and now and then on purpose. Each records the change numbers it was shown
//! (a token is `WORKSPACE.SEQ`); the check compares them with the change log.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use token_auth::signing::ServiceTokenMinter;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use wsp::workspace_service_client::WorkspaceServiceClient;

/// What one watcher was shown.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub org: String,
    /// Channel watch: the channel; workspace watch: `None`.
    pub channel: Option<String>,
    /// The change number of the first token received.
    pub first: Option<i64>,
    /// Change numbers of the changes shown after the first token, in order.
    pub changes: Vec<i64>,
    /// The last token's number (a change's or a caught-up marker's).
    pub last: Option<i64>,
    pub reconnects: u32,
    /// Why it ended before the soak did (the workspace was deleted), if it did.
    pub ended: Option<String>,
    /// A resume token the service refused (a gap it owned up to).
    pub refused: Option<String>,
}

fn seq_of(token: &str) -> Option<i64> {
    token.rsplit_once('.')?.1.parse().ok()
}

impl Seen {
    fn token(&mut self, token: &str, change: bool) {
        let Some(seq) = seq_of(token) else { return };
        if self.first.is_none() {
            self.first = Some(seq);
        } else if change {
            self.changes.push(seq);
        }
        self.last = Some(seq);
    }
}

struct Watcher {
    client: WorkspaceServiceClient<Channel>,
    minter: Arc<ServiceTokenMinter>,
    seen: Seen,
    rng: StdRng,
}

impl Watcher {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let token = self
            .minter
            .token_for("workspace-service")
            .unwrap_or_default();
        service_harness::bearer(msg, &token)
    }

    fn resume(&self, token: &Option<String>) -> String {
        token.clone().unwrap_or_default()
    }

    /// One stream until it breaks, `until` passes or `stop`; returns the status it ended with.
    async fn stream(
        &mut self,
        token: &mut Option<String>,
        until: Instant,
        stop: &AtomicBool,
    ) -> Option<tonic::Status> {
        macro_rules! follow {
            ($call:expr, $kind:ident) => {{
                let mut s = match $call.await {
                    Ok(s) => s.into_inner(),
                    Err(e) => return Some(e),
                };
                while Instant::now() < until && !stop.load(Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
                        Err(_) => continue,
                        Ok(Ok(Some(ev))) => {
                            let change = !matches!(ev.event, Some(wsp::$kind::Event::CaughtUp(_)));
                            self.seen.token(&ev.resume_token, change);
                            *token = Some(ev.resume_token);
                        }
                        Ok(Ok(None)) => return Some(tonic::Status::unavailable("stream ended")),
                        Ok(Err(e)) => return Some(e),
                    }
                }
                None
            }};
        }
        match self.seen.channel.clone() {
            Some(channel_id) => {
                let r = self.req(wsp::WatchChannelRequest {
                    channel_id,
                    resume_token: self.resume(token),
                });
                follow!(self.client.watch_channel(r), channel_event)
            }
            None => {
                let r = self.req(wsp::WatchWorkspaceRequest {
                    clerk_org_id: self.seen.org.clone(),
                    resume_token: self.resume(token),
                });
                follow!(self.client.watch_workspace(r), workspace_event)
            }
        }
    }

    async fn channel_of(&mut self) -> Option<String> {
        let r = self.req(wsp::ListChannelsRequest {
            clerk_org_id: self.seen.org.clone(),
            page_size: 1,
            page_token: String::new(),
        });
        let c = self.client.list_channels(r).await.ok()?.into_inner();
        c.channels.first().map(|c| c.id.clone())
    }
}

/// Follows `org` (its first channel when `channel`) until `stop`.
pub async fn run(
    addr: std::net::SocketAddr,
    minter: Arc<ServiceTokenMinter>,
    org: String,
    channel: bool,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Seen {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut w = Watcher {
        client: WorkspaceServiceClient::new(ch),
        minter,
        seen: Seen {
            org,
            ..Seen::default()
        },
        rng: StdRng::seed_from_u64(seed),
    };
    let mut token: Option<String> = None;
    while !stop.load(Relaxed) {
        if channel && w.seen.channel.is_none() {
            w.seen.channel = w.channel_of().await;
            if w.seen.channel.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        // Now and then the client leaves and comes back on its own.
        let until = Instant::now() + Duration::from_secs(w.rng.random_range(5..30));
        let ended = w.stream(&mut token, until, &stop).await;
        match ended {
            Some(s) if s.code() == tonic::Code::PermissionDenied && w.seen.first.is_some() => {
                w.seen.ended = Some(s.message().to_owned());
                break;
            }
            Some(s) if s.code() == tonic::Code::FailedPrecondition => {
                w.seen.refused = Some(s.message().to_owned());
                break;
            }
            // Not there yet (its webhook is on its way), or the service is away.
            _ => {}
        }
        if stop.load(Relaxed) {
            break;
        }
        w.seen.reconnects += 1;
        tokio::time::sleep(Duration::from_millis(w.rng.random_range(50..500))).await;
    }
    w.seen
}
