//! One caller's watch of a channel or of a workspace: its backlog after the resume token, read
//! from the change log, then the hub's changes, each once and in order, filtered to what it
//! watches (a channel's events, or the workspace's own).
//!
//! A stream's task fills its [`Outbox`], counted in bytes: the backlog is read in pieces that
//! fit the stream's budget (`WATCH_BUFFER_BYTES`) as the client reads; a live change that does
//! not fit ends the stream with RESOURCE_EXHAUSTED, and so does the replica's live events
//! holding more than `WATCH_MEMORY_BYTES` while this client is behind (a frame unread for more
//! than [`outbox::UNREAD_GRACE`], queued or held by the HTTP/2 layer for want of window; a
//! client that reads as frames come is never behind); the client resumes with its last token.
//! Whether in the backlog or live, the stream ends when the caller's token
//! expires (UNAUTHENTICATED), when the periodic re-check finds the caller no longer has access
//! (PERMISSION_DENIED), after the workspace's deletion (PERMISSION_DENIED, once what is queued
//! is read), and at once when the service starts shutting down (UNAVAILABLE). Ending at once
//! drops what is queued. A client that is behind when its stream ends, or that does not read
//! the end within the grace, gets no status: the stream is cut ([`Outbox::cut`]: HTTP/2 stream
//! reset, HTTP/1.1 connection closed), so the HTTP layer frees what it held for it. A stream
//! that falls behind the hub's broadcast reads what it missed from the log.
//!
//! The user's place and the replica's stream permit belong to the response: they are given
//! back once the HTTP layer dropped its body and the task settled the end.

use super::LiveSettings;
use super::frames::{self, Frame, Memory};
use super::hub::Hub;
use super::outbox::{self, Body, Outbox, Transport};
use crate::domain::access::{Caller, channel_scope};
use crate::domain::standing::AccessCache;
use crate::domain::{changes, workspaces};
use crate::error::Error;
use crate::metrics::Metrics;
use service_runtime::replica::ReadPool;
use service_runtime::{Lifecycle, Phase, Pool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, broadcast};
use tonic::Status;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// Rows one read of the backlog takes at most (its bytes are bounded by the stream's room).
const READ_ROWS: i64 = 500;

/// Past this share of `WATCH_MAX_STREAMS` open (in quarters), a user may open another watch
/// only while holding fewer than [`FAIR_SHARE`]: the last quarter is kept for the users who
/// have few, so 64 accounts at `WATCH_MAX_PER_USER` cannot take every stream.
const CROWDED_QUARTERS: usize = 3;
/// The watches a user may hold on a crowded replica.
const FAIR_SHARE: usize = 4;

/// What is watched.
#[derive(Debug, Clone)]
pub enum Scope {
    /// A channel's messages and read receipts.
    Channel(Uuid),
    /// The workspace's own changes (channels, rooms, members...).
    Workspace(crate::model::OrgId),
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
            Scope::Workspace(org) => Ok(crate::domain::access::workspace_for(conn, caller, org)
                .await?
                .id),
        }
    }

    /// Whether a change of `channel` (`None`: the workspace's own) is one of this watch's.
    fn wants(&self, channel: Option<Uuid>) -> bool {
        match self {
            Scope::Channel(c) => channel == Some(*c),
            Scope::Workspace(_) => channel.is_none(),
        }
    }

    /// The frame that ends the backlog.
    fn caught_up(&self, memory: &Arc<Memory>, resume_token: String) -> bytes::Bytes {
        match self {
            Scope::Channel(_) => frames::message(
                memory,
                &pb::ChannelEvent {
                    resume_token,
                    recorded_at: None,
                    event: Some(pb::channel_event::Event::CaughtUp(pb::CaughtUp {})),
                },
            ),
            Scope::Workspace(_) => frames::message(
                memory,
                &pb::WorkspaceEvent {
                    resume_token,
                    recorded_at: None,
                    event: Some(pb::workspace_event::Event::CaughtUp(pb::CaughtUp {})),
                },
            ),
        }
    }
}

/// Watches of this replica.
#[derive(Clone)]
pub struct Live {
    pool: Pool,
    /// Where the backlog is read: a replica's while it keeps up, else the primary's.
    reads: ReadPool,
    hub: Hub,
    memory: Arc<Memory>,
    streams: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    settings: LiveSettings,
    lifecycle: Lifecycle,
    metrics: Metrics,
}

/// A user's place among their open streams, given back when the stream ends.
struct UserSlot {
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut users = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Live {
    /// Watches served through `hub`, whose frames count in `memory`; they end when `lifecycle`
    /// starts shutting down. The opens and the access re-checks read `pool` (the primary), the
    /// backlog `reads`.
    pub fn new(
        pool: Pool,
        reads: ReadPool,
        hub: Hub,
        memory: Arc<Memory>,
        settings: LiveSettings,
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> Self {
        Self {
            pool,
            reads,
            hub,
            memory,
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            per_user: Arc::default(),
            settings,
            lifecycle,
            metrics,
        }
    }

    /// Takes one of `caller`'s places among their open streams (users only), `open` streams
    /// being open on the replica with this one.
    fn user_slot(&self, caller: &Caller, open: usize) -> Result<Option<UserSlot>, Status> {
        let Some(user) = caller.user_id() else {
            return Ok(None);
        };
        let mut users = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(user.to_owned()).or_default();
        if *n >= self.settings.per_user {
            return Err(Status::resource_exhausted(format!(
                "this user already has {} watches open on this replica (WATCH_MAX_PER_USER): close one before opening another",
                self.settings.per_user
            )));
        }
        let crowded = open * 4 > self.settings.max_streams * CROWDED_QUARTERS;
        if crowded && *n >= FAIR_SHARE {
            return Err(Status::resource_exhausted(format!(
                "this replica is serving most of its watch streams, and each user may then have {FAIR_SHARE} open on it: close one, or retry later"
            )));
        }
        *n += 1;
        Ok(Some(UserSlot {
            per_user: Arc::clone(&self.per_user),
            user: user.to_owned(),
        }))
    }

    /// Opens a watch of `scope` for `caller` (whose token expires at `expires_at`, Unix
    /// seconds), after `resume_token` or from now; returns the response body that carries it
    /// over `transport`.
    pub async fn open(
        &self,
        transport: Transport,
        caller: Caller,
        access: Option<&AccessCache>,
        expires_at: Option<i64>,
        scope: Scope,
        resume_token: Option<String>,
    ) -> Result<Body, Status> {
        if self.lifecycle.phase() != Phase::Running {
            return Err(Status::unavailable(
                "the service is stopping: watch again (another replica answers)",
            ));
        }
        let permit = Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::unavailable(
                "this replica serves its most watch streams (WATCH_MAX_STREAMS); retry later",
            )
        })?;
        let open = self.settings.max_streams - self.streams.available_permits();
        let slot = self.user_slot(&caller, open)?;
        // One connection for the whole open: the scope, the hub's first read, the bounds.
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let workspace = scope.check(&mut conn, &caller).await?;
        // Subscribe first, then read where the backlog ends: nothing falls in between.
        let live = self.hub.subscribe(&mut conn, workspace).await?;
        let (head, first) = changes::bounds(&mut conn, workspace)
            .await
            .map_err(Error::from)?;
        drop(conn);
        let start = match resume_token.as_deref() {
            None => head,
            Some(t) => {
                let seq = changes::parse_token(workspace, t)
                    .filter(|s| *s <= head)
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "resume_token is not one this watch gave out; watch without it",
                        )
                    })?;
                if seq < head && first.is_none_or(|f| seq + 1 < f) {
                    return Err(too_old());
                }
                seq
            }
        };
        let (outbox, body) = outbox::pair(transport, (permit, slot));
        let stream = Stream {
            live: self.clone(),
            // The open was decided on the database; the re-checks may use the cache, which
            // hears a removal within its bound.
            caller: caller.with_access(access),
            expires_at,
            workspace,
            scope,
            last: start,
            known: head,
            reading: true,
            announced: false,
            outbox,
        };
        self.metrics.watch_streams.inc();
        tokio::spawn(stream.run(live));
        Ok(body)
    }
}

fn too_old() -> Status {
    Status::failed_precondition(
        "resume_token is older than the change log keeps: list again, then watch without a token",
    )
}

struct Stream {
    live: Live,
    caller: Caller,
    expires_at: Option<i64>,
    workspace: Uuid,
    scope: Scope,
    /// The last change number seen (delivered or not: another channel's, say).
    last: i64,
    /// The highest change number known to exist (the head at the open, a live change): a
    /// backlog read on a replica that ends before it read a replica behind the primary.
    known: i64,
    /// Reading the log (the backlog, or what it missed of the broadcast) rather than the hub.
    reading: bool,
    /// `caught_up` was sent.
    announced: bool,
    outbox: Outbox,
}

/// Why a stream stopped sending.
enum End {
    /// The client went away.
    Gone,
    /// End with this status now, dropping what is queued.
    Now(Status, &'static str),
    /// End with this status after what is queued (the workspace was deleted).
    After(Status, &'static str),
}

/// What woke a stream's task.
enum Step {
    End(End),
    Recheck,
    Pressure,
    Live(Result<Arc<Frame>, broadcast::error::RecvError>),
    Read,
}

impl Stream {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<Frame>>) {
        let end = self.serve(&mut live).await;
        drop(live);
        let metrics = self.live.metrics.clone();
        let reason = match end {
            End::Gone => {
                // The response is gone: its places are free before its end is counted (a new
                // open may follow the count at once).
                drop(self);
                metrics.watch_ended("gone");
                metrics.watch_streams.dec();
                return;
            }
            End::Now(_, reason @ ("behind" | "memory")) => {
                // The client does not read: its end could not reach it.
                self.outbox.cut();
                metrics.watch_cuts.inc();
                reason
            }
            End::Now(status, reason) => {
                let budget = self.live.settings.stream_bytes;
                if self.outbox.behind(budget, tokio::time::Instant::now()) {
                    self.outbox.cut();
                    metrics.watch_cuts.inc();
                } else {
                    self.outbox.end_now(&status);
                }
                reason
            }
            End::After(status, reason) => {
                self.outbox.end_after(&status);
                reason
            }
        };
        metrics.watch_ended(reason);
        if self.outbox.settle().await {
            metrics.watch_cuts.inc();
        }
        metrics.watch_streams.dec();
    }

    async fn serve(&mut self, live: &mut broadcast::Receiver<Arc<Frame>>) -> End {
        let shutdown = self.live.lifecycle.shutting_down();
        tokio::pin!(shutdown);
        let expiry = self.expires_at.map(|exp| {
            let now = token_auth::signing::now_secs();
            tokio::time::Instant::now() + std::time::Duration::from_secs((exp - now).max(0) as u64)
        });
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        // Re-checks in a row that could not be made.
        let mut unchecked = 0;
        let mut recheck = tokio::time::interval(self.live.settings.recheck);
        recheck.tick().await;
        let budget = self.live.settings.stream_bytes;
        loop {
            // Under pressure, a client that stops reading is judged once its oldest unread
            // frame passes the grace, even when nothing else wakes this task.
            let judge_at = if !self.live.memory.over() {
                None
            } else if self.outbox.behind(budget, tokio::time::Instant::now()) {
                return out_of_memory();
            } else {
                self.outbox.behind_at()
            };
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Step::End(End::Now(
                    Status::unavailable("the service is stopping: watch again with the last resume token"),
                    "stopping",
                )),
                _ = &mut expired => Step::End(End::Now(
                    Status::unauthenticated(
                        "the token expired: watch again with a fresh token and the last resume token",
                    ),
                    "expired",
                )),
                _ = self.outbox.closed() => Step::End(End::Gone),
                _ = recheck.tick() => Step::Recheck,
                _ = self.live.memory.pressure() => Step::Pressure,
                _ = sleep_until(judge_at) => Step::Pressure,
                r = live.recv() => Step::Live(r),
                _ = self.outbox.drained_to(budget / 2), if self.reading => Step::Read,
            };
            let done = match step {
                Step::End(end) => Err(end),
                Step::Recheck => self.check_access(&mut unchecked).await,
                Step::Pressure => Ok(()),
                Step::Live(Ok(f)) => match self.deliver(&f) {
                    // The caller's own membership changed: their access now, not at the next
                    // periodic check. The hub sends a frame only once this replica's caches
                    // have heard its change (or no longer answer), so the check sees it.
                    Ok(())
                        if f.member.is_some() && f.member.as_deref() == self.caller.user_id() =>
                    {
                        self.check_access(&mut unchecked).await
                    }
                    done => done,
                },
                Step::Live(Err(broadcast::error::RecvError::Lagged(_))) => {
                    // The log has what the broadcast dropped.
                    self.reading = true;
                    Ok(())
                }
                Step::Live(Err(broadcast::error::RecvError::Closed)) => Err(End::Now(
                    Status::unavailable(
                        "the service is stopping: watch again with the last resume token",
                    ),
                    "stopping",
                )),
                Step::Read => self.read_log().await,
            };
            if let Err(end) = done {
                return end;
            }
        }
    }

    /// Reads the changes after `self.last` from the log, as many as fit the stream's room, and
    /// queues this watch's; once the log has no more, the stream is live (and says so once).
    async fn read_log(&mut self) -> Result<(), End> {
        let room = self
            .live
            .settings
            .stream_bytes
            .saturating_sub(self.outbox.queued())
            .max(1);
        let mut batch = self.read_changes(room, false).await?;
        let reached = batch.changes.last().map_or(self.last, |c| c.seq);
        if !batch.more && reached < self.known && self.live.reads.has_replica() {
            // The replica has not replayed changes the primary has: read them there.
            batch = self.read_changes(room, true).await?;
        }
        if batch
            .changes
            .first()
            .is_some_and(|c| c.seq != self.last + 1)
        {
            return Err(self.gap(batch.changes.swap_remove(0)).await);
        }
        let budget = self.live.settings.stream_bytes;
        for c in &batch.changes {
            let wanted = self.scope.wants(c.channel_id);
            if !wanted && frames::ends_workspace(c) {
                // A channel's watch ends with its workspace, not at the next re-check.
                self.last = c.seq;
                return Err(deleted());
            }
            if wanted {
                let frame = Frame::of(&self.live.memory, c);
                let queued = self.outbox.queued();
                if queued > budget / 2 && queued + frame.bytes.len() > budget {
                    // The room was counted in payload bytes, frames are larger: the rest is
                    // read again once the client has read down to half.
                    return Ok(());
                }
                self.last = c.seq;
                self.outbox.push(frame.bytes);
                if frame.last {
                    return Err(deleted());
                }
            }
            self.last = c.seq;
        }
        if !batch.more {
            self.reading = false;
            if !self.announced {
                self.announced = true;
                let token = changes::token(self.workspace, self.last);
                let marker = self.scope.caught_up(&self.live.memory, token);
                self.outbox.push(marker);
            }
        }
        Ok(())
    }

    /// How the stream ends at a gap after its position, `first` the change after the gap: as
    /// deleted when the workspace was (its purge deletes the log in no particular order, and
    /// nothing missed matters any more), with the deletion's event when the log has it; else
    /// as too old (pruned since: never skip changes in silence).
    async fn gap(&mut self, first: changes::Change) -> End {
        match self.behind_gap(first).await {
            Ok(Gap::Deleted(deletion)) => {
                if let Some(d) = deletion
                    && self.scope.wants(None)
                {
                    self.outbox.push(Frame::of(&self.live.memory, &d).bytes);
                }
                deleted()
            }
            Ok(Gap::Pruned) => End::Now(too_old(), "too_old"),
            Err(e) => End::Now(e.into(), "error"),
        }
    }

    /// What a gap before `first` means: the workspace was deleted (with its deletion's change
    /// when `first` is it or it is the log's last), or its changes were pruned.
    async fn behind_gap(&self, first: changes::Change) -> Result<Gap, Error> {
        if frames::ends_workspace(&first) {
            return Ok(Gap::Deleted(Some(first)));
        }
        let mut conn = self.live.pool.get().await?;
        if let Some(last) = changes::last(&mut conn, self.workspace).await?
            && frames::ends_workspace(&last)
        {
            return Ok(Gap::Deleted(Some(last)));
        }
        // The deletion's entry may be gone (pruned by age while a long purge runs) or not
        // the last (a log from before deletions closed it): the workspace's row says.
        Ok(
            if workspaces::workspace_deleted(&mut conn, self.workspace).await? {
                Gap::Deleted(None)
            } else {
                Gap::Pruned
            },
        )
    }

    /// The changes after `self.last` that fit `room`, from the read pool (a replica's while it
    /// keeps up) or from the `primary`; a read that fails on the replica for a lost connection
    /// or a conflict with recovery is read again on the primary.
    async fn read_changes(&self, room: usize, primary: bool) -> Result<changes::Batch, End> {
        let read = async |conn: &mut diesel_async::AsyncPgConnection| {
            changes::after(conn, self.workspace, self.last, READ_ROWS, room as i64)
                .await
                .map_err(Error::from)
        };
        async {
            let (mut conn, on_replica) = if primary {
                (self.live.pool.get().await?, false)
            } else {
                self.live.reads.get_routed(None).await?
            };
            match read(&mut conn).await {
                Err(e) if on_replica && service_runtime::replica::read_again_on_primary(&e) => {
                    drop(conn);
                    let mut conn = self.live.reads.primary_after_replica_error(&e).await?;
                    read(&mut conn).await
                }
                batch => batch,
            }
        }
        .await
        .map_err(|e| End::Now(e.into(), "error"))
    }

    /// Queues a live change when it is one of this watch's; every change moves the position.
    fn deliver(&mut self, f: &Frame) -> Result<(), End> {
        self.known = self.known.max(f.seq);
        if self.reading || f.seq <= self.last {
            // While reading the log, the log has it.
            return Ok(());
        }
        if f.seq > self.last + 1 {
            // Broadcast before this stream caught up: read the gap from the log.
            self.reading = true;
            return Ok(());
        }
        self.last = f.seq;
        if !self.scope.wants(f.channel) {
            return if f.last { Err(deleted()) } else { Ok(()) };
        }
        let queued = self.outbox.queued();
        if queued > 0 && queued + f.bytes.len() > self.live.settings.stream_bytes {
            return Err(End::Now(
                Status::resource_exhausted(
                    "the client fell behind (more than WATCH_BUFFER_BYTES unread); watch again with the last resume token",
                ),
                "behind",
            ));
        }
        if self.live.memory.over()
            && self
                .outbox
                .behind(self.live.settings.stream_bytes, tokio::time::Instant::now())
        {
            return Err(out_of_memory());
        }
        self.outbox.push(f.bytes.clone());
        if f.last { Err(deleted()) } else { Ok(()) }
    }

    /// Ends the stream when the caller may no longer watch, or when their access could not be
    /// checked twice in a row (fail closed: a removed member is served at most about two
    /// `WATCH_ACCESS_RECHECK_SECS` and a check's time); `unchecked` counts the failures in a row.
    async fn check_access(&self, unchecked: &mut u32) -> Result<(), End> {
        let checked = async {
            let mut conn = self.live.pool.get().await?;
            self.scope.check(&mut conn, &self.caller).await
        };
        match checked.await {
            Ok(_) => {
                *unchecked = 0;
                Ok(())
            }
            Err(Error::Denied(m)) | Err(Error::NotFound(m)) => {
                Err(End::Now(Status::permission_denied(m), "denied"))
            }
            Err(e) if *unchecked >= 1 => {
                tracing::warn!(error = %e, "re-checking a watcher's access failed again; ending the watch");
                Err(End::Now(
                    Status::unavailable(
                        "your access to this watch could not be checked: watch again with the last resume token",
                    ),
                    "unchecked",
                ))
            }
            Err(e) => {
                *unchecked += 1;
                tracing::warn!(error = %e, "re-checking a watcher's access failed; checked again at the next interval");
                Ok(())
            }
        }
    }
}

/// What a gap in the log after a watch's position means.
enum Gap {
    /// The workspace was deleted; its deletion's change, when the log still has it.
    Deleted(Option<changes::Change>),
    /// Changes after the position were pruned.
    Pruned,
}

/// Resolves at `at`; never when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The end of a stream that is behind while the replica's live events are over their limit.
fn out_of_memory() -> End {
    End::Now(
        Status::resource_exhausted(
            "the client fell behind while this replica's watch buffers are full (WATCH_MEMORY_BYTES); watch again with the last resume token",
        ),
        "memory",
    )
}

/// The end of a watch whose workspace was deleted.
fn deleted() -> End {
    End::After(
        Status::permission_denied("the workspace was deleted"),
        "deleted",
    )
}
