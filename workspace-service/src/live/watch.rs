//! One caller's watch of a channel or of a workspace: its backlog after the resume token, read
//! from the change log, then the hub's changes, each once and in order, filtered to what it
//! watches (a channel's events, or the workspace's own). The backlog
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
pub type Events<T> = tokio_stream::wrappers::ReceiverStream<Result<T, Status>>;

/// What is watched.
#[derive(Debug, Clone)]
enum Scope {
    Channel(Uuid),
    Workspace(crate::model::OrgId),
}

/// The events of one kind of watch.
pub trait WatchEvent: Send + Sized + 'static {
    /// This watch's event for `c`, when `c` is one of its changes.
    fn of(c: &Change, channel: Option<Uuid>) -> Option<Result<Self, Status>>;
    /// The end of the backlog.
    fn caught_up(token: String) -> Self;
    /// Whether nothing can follow it (the workspace was deleted).
    fn is_last(&self) -> bool;
}

impl WatchEvent for pb::ChannelEvent {
    fn of(c: &Change, channel: Option<Uuid>) -> Option<Result<Self, Status>> {
        (c.channel_id.is_some() && c.channel_id == channel)
            .then(|| c.event().ok_or_else(|| Status::internal("internal error")))
    }
    fn caught_up(resume_token: String) -> Self {
        Self {
            resume_token,
            recorded_at: None,
            event: Some(pb::channel_event::Event::CaughtUp(pb::CaughtUp {})),
        }
    }
    fn is_last(&self) -> bool {
        false
    }
}

impl WatchEvent for pb::WorkspaceEvent {
    fn of(c: &Change, _channel: Option<Uuid>) -> Option<Result<Self, Status>> {
        c.channel_id.is_none().then(|| {
            c.workspace_event()
                .ok_or_else(|| Status::internal("internal error"))
        })
    }
    fn caught_up(resume_token: String) -> Self {
        Self {
            resume_token,
            recorded_at: None,
            event: Some(pb::workspace_event::Event::CaughtUp(pb::CaughtUp {})),
        }
    }
    fn is_last(&self) -> bool {
        matches!(
            self.event,
            Some(pb::workspace_event::Event::WorkspaceDeleted(_))
        )
    }
}

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
    ) -> Result<Events<pb::ChannelEvent>, Error> {
        self.open(caller, expires_at, Scope::Channel(channel), resume_token)
            .await
    }

    /// Opens a watch of the workspace of `org` for `caller`, like [`Live::watch_channel`].
    pub async fn watch_workspace(
        &self,
        caller: Caller,
        expires_at: Option<i64>,
        org: crate::model::OrgId,
        resume_token: Option<String>,
    ) -> Result<Events<pb::WorkspaceEvent>, Error> {
        self.open(caller, expires_at, Scope::Workspace(org), resume_token)
            .await
    }

    async fn open<T: WatchEvent>(
        &self,
        caller: Caller,
        expires_at: Option<i64>,
        scope: Scope,
        resume_token: Option<String>,
    ) -> Result<Events<T>, Error> {
        let permit = Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Error::Unavailable(
                "this replica serves its most watch streams (WATCH_MAX_STREAMS); retry later",
            )
        })?;
        let mut conn = self.pool.get().await?;
        let workspace = scope.check(&mut conn, &caller).await?;
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
                            "resume_token is not one this watch gave out; watch without it".into(),
                        )
                    })?;
                if seq < head && first.is_none_or(|f| seq + 1 < f) {
                    return Err(Error::Precondition(
                        "resume_token is older than the change log keeps: list again, then watch without a token".into(),
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
            scope,
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

impl Scope {
    /// The workspace watched, when the caller may watch it.
    async fn check(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        caller: &Caller,
    ) -> Result<Uuid, Error> {
        match self {
            Scope::Channel(c) => channel_scope(conn, caller, *c).await,
            Scope::Workspace(org) => {
                Ok(crate::domain::workspaces::workspace_for(conn, caller, org)
                    .await?
                    .id)
            }
        }
    }

    fn channel(&self) -> Option<Uuid> {
        match self {
            Scope::Channel(c) => Some(*c),
            Scope::Workspace(_) => None,
        }
    }
}

struct Stream<T> {
    live: Live,
    caller: Caller,
    expires_at: Option<i64>,
    workspace: Uuid,
    scope: Scope,
    /// The last change number seen (delivered or not: another channel's, say).
    last: i64,
    tx: mpsc::Sender<Result<T, Status>>,
    _permit: OwnedSemaphorePermit,
}

impl<T: WatchEvent> Stream<T> {
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
        let caught_up = T::caught_up(changes::token(self.workspace, self.last));
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
                if let Some(e) = T::of(c, self.scope.channel()) {
                    let e = e.map_err(End::Status)?;
                    let last = e.is_last();
                    self.backlog_send(e).await?;
                    if last {
                        return Err(deleted());
                    }
                }
            }
            if n < 500 {
                return Ok(());
            }
        }
    }

    /// Sends `c` when it is one of this watch's changes; every change moves the position.
    fn deliver(&mut self, c: &Change) -> Result<(), End> {
        self.last = c.seq;
        match T::of(c, self.scope.channel()) {
            None => Ok(()),
            Some(Err(s)) => Err(End::Status(s)),
            Some(Ok(e)) => {
                let last = e.is_last();
                self.send(e)?;
                if last { Err(deleted()) } else { Ok(()) }
            }
        }
    }

    /// Sends `e`, waiting while the client's buffer is full.
    async fn backlog_send(&self, e: T) -> Result<(), End> {
        self.tx.send(Ok(e)).await.map_err(|_| End::Gone)
    }

    /// Queues a live event; a full buffer ends the stream.
    fn send(&self, e: T) -> Result<(), End> {
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
        match self.scope.check(&mut conn, &self.caller).await {
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

/// The end of a watch whose workspace was deleted.
fn deleted() -> End {
    End::Status(Status::permission_denied("the workspace was deleted"))
}
