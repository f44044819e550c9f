//! One caller's watch of a channel: its backlog after the resume token, read from the change
//! log, then the hub's changes, each once and in order, filtered to the channel. The backlog
//! is sent as fast as the client reads it; live changes go into a bounded buffer, and a client
//! that lets it fill is ended with RESOURCE_EXHAUSTED and resumes with its last token. It also ends when the caller's token
//! expires, when a periodic re-check finds the caller no longer has access (a removed member, a
//! deleted workspace), or when the hub drops behind.

use super::LiveSettings;
use super::hub::Hub;
use crate::domain::access::{Caller, channel_scope};
use crate::domain::changes::{self, Change};
use crate::error::Error;
use service_runtime::Pool;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// What a watch stream yields.
pub type Events = tokio_stream::wrappers::ReceiverStream<Result<pb::ChannelEvent, Status>>;

/// Watches of this replica.
#[derive(Clone)]
pub struct Live {
    pool: Pool,
    hub: Hub,
    streams: Arc<Semaphore>,
    settings: LiveSettings,
    open: prometheus_client::metrics::gauge::Gauge,
}

/// Why a stream stopped sending.
enum End {
    /// The client went away.
    Gone,
    /// End with this status.
    Status(Status),
}

impl Live {
    /// Watches served through `hub`; `open` counts the streams open.
    pub fn new(
        pool: Pool,
        hub: Hub,
        settings: LiveSettings,
        open: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        Self {
            pool,
            hub,
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            settings,
            open,
        }
    }

    /// Opens a watch of `channel` for `caller` (whose token expires at `expires_at`, Unix
    /// seconds), after `resume_token` or from now.
    pub async fn watch_channel(
        &self,
        caller: Caller,
        expires_at: Option<i64>,
        channel: Uuid,
        resume_token: Option<String>,
    ) -> Result<Events, Error> {
        let permit = Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Error::Unavailable(
                "this replica serves its most watch streams (WATCH_MAX_STREAMS); retry later",
            )
        })?;
        let mut conn = self.pool.get().await?;
        let workspace = channel_scope(&mut conn, &caller, channel).await?;
        // Subscribe first, then read where the backlog ends: nothing falls in between.
        let live = self.hub.subscribe(workspace).await?;
        let (head, first) = changes::bounds(&mut conn, workspace).await?;
        let start = match resume_token.as_deref() {
            None => head,
            Some(t) => {
                let seq = changes::parse_token(workspace, t)
                    .filter(|s| *s <= head)
                    .ok_or_else(|| {
                        Error::Invalid(
                            "resume_token is not one this channel's watch gave out; watch without it".into(),
                        )
                    })?;
                if seq < head && first.is_none_or(|f| seq + 1 < f) {
                    return Err(Error::Precondition(
                        "resume_token is older than the change log keeps: list the channel again, then watch without a token".into(),
                    ));
                }
                seq
            }
        };
        drop(conn);
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        let stream = Stream {
            live: self.clone(),
            caller,
            expires_at,
            workspace,
            channel,
            last: start,
            tx,
            _permit: permit,
        };
        let open = self.open.clone();
        open.inc();
        tokio::spawn(async move {
            stream.run(live).await;
            open.dec();
        });
        Ok(Events::new(rx))
    }
}

struct Stream {
    live: Live,
    caller: Caller,
    expires_at: Option<i64>,
    workspace: Uuid,
    channel: Uuid,
    /// The last change number seen (delivered or not of this channel).
    last: i64,
    tx: mpsc::Sender<Result<pb::ChannelEvent, Status>>,
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<Change>>) {
        let end = match self.serve(&mut live).await {
            Ok(()) | Err(End::Gone) => return,
            Err(End::Status(s)) => s,
        };
        // The closing status, once the client has room for it (or gives up).
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.tx.send(Err(end))).await;
    }

    async fn serve(&mut self, live: &mut broadcast::Receiver<Arc<Change>>) -> Result<(), End> {
        self.catch_up(None).await?;
        let caught_up = pb::ChannelEvent {
            resume_token: changes::token(self.workspace, self.last),
            recorded_at: None,
            event: Some(pb::channel_event::Event::CaughtUp(pb::CaughtUp {})),
        };
        self.backlog_send(caught_up).await?;
        let expiry = self.expires_at.map(|exp| {
            let now = token_auth::signing::now_secs();
            tokio::time::Instant::now() + std::time::Duration::from_secs((exp - now).max(0) as u64)
        });
        let mut recheck = tokio::time::interval(self.live.settings.recheck);
        recheck.tick().await;
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(c) => {
                        if c.seq <= self.last {
                            continue;
                        }
                        if c.seq > self.last + 1 {
                            // Broadcast before this stream subscribed: read the gap.
                            self.catch_up(Some(c.seq - 1)).await?;
                        }
                        self.deliver(&c)?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(End::Status(Status::resource_exhausted(
                            "the client fell behind the channel's changes; watch again with the last resume token",
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(End::Status(Status::unavailable("the service is stopping; watch again with the last resume token")));
                    }
                },
                _ = async { match expiry { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    return Err(End::Status(Status::unauthenticated(
                        "the token expired: watch again with a fresh token and the last resume token",
                    )));
                }
                _ = recheck.tick() => self.check_access().await?,
                _ = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    /// Delivers the changes after `self.last` (up to `until`, when given) from the log, as fast
    /// as the client reads them.
    async fn catch_up(&mut self, until: Option<i64>) -> Result<(), End> {
        loop {
            let mut conn = self
                .live
                .pool
                .get()
                .await
                .map_err(|e| End::Status(Error::from(e).into()))?;
            let batch = changes::after(&mut conn, self.workspace, self.last, 500)
                .await
                .map_err(|e| End::Status(Error::from(e).into()))?;
            drop(conn);
            let n = batch.len();
            for c in &batch {
                if until.is_some_and(|u| c.seq > u) {
                    return Ok(());
                }
                self.last = c.seq;
                if c.channel_id == Some(self.channel) {
                    let e = c
                        .event()
                        .ok_or_else(|| End::Status(Status::internal("internal error")))?;
                    self.backlog_send(e).await?;
                }
            }
            if n < 500 {
                return Ok(());
            }
        }
    }

    /// Sends `c` when it is this channel's; every change moves the position.
    fn deliver(&mut self, c: &Change) -> Result<(), End> {
        self.last = c.seq;
        if c.channel_id != Some(self.channel) {
            return Ok(());
        }
        match c.event() {
            Some(e) => self.send(e),
            None => Err(End::Status(Status::internal("internal error"))),
        }
    }

    /// Sends `e`, waiting while the client's buffer is full.
    async fn backlog_send(&self, e: pb::ChannelEvent) -> Result<(), End> {
        self.tx.send(Ok(e)).await.map_err(|_| End::Gone)
    }

    /// Queues a live event; a full buffer ends the stream.
    fn send(&self, e: pb::ChannelEvent) -> Result<(), End> {
        if self.tx.is_closed() {
            return Err(End::Gone);
        }
        if self.tx.capacity() == 0 {
            return Err(End::Status(Status::resource_exhausted(
                "the client fell behind (WATCH_BUFFER events unread); watch again with the last resume token",
            )));
        }
        self.tx.try_send(Ok(e)).map_err(|_| End::Gone)
    }

    /// Ends the stream when the caller may no longer read the channel.
    async fn check_access(&self) -> Result<(), End> {
        let mut conn = self
            .live
            .pool
            .get()
            .await
            .map_err(|e| End::Status(Error::from(e).into()))?;
        match channel_scope(&mut conn, &self.caller, self.channel).await {
            Ok(_) => Ok(()),
            Err(Error::Denied(m)) | Err(Error::NotFound(m)) => {
                Err(End::Status(Status::permission_denied(m)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-checking a watcher's access failed; checked again later");
                Ok(())
            }
        }
    }
}
