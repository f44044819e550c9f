//! Live events as they go on the wire, encoded once per change and shared by every stream that
//! sends them, and the replica's count of the bytes they hold.
//!
//! A frame is one gRPC message of a watch stream: the 5-byte gRPC prefix, then the event
//! (`ChannelEvent` or `WorkspaceEvent`; both number `resume_token` 1 and `recorded_at` 2). The
//! change log stores each event without those two fields, so a frame is the two fields
//! followed by the stored bytes: nothing is decoded or encoded again per watcher. A frame is
//! [`Bytes`] whose owner counts its size in [`Memory`] until its last copy is gone (the hub's
//! broadcast, a stream's queue, or the HTTP/2 layer that is sending it), so what live events
//! hold is known exactly, in bytes.

use crate::domain::changes::{self, Change};
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// The bytes the replica's live events hold, against a limit.
#[derive(Debug)]
pub struct Memory {
    used: AtomicUsize,
    limit: usize,
    pressure: Notify,
    gauge: Gauge,
}

impl Memory {
    /// A count whose `limit` streams that fall behind may not push it past; `gauge` follows it.
    pub fn new(limit: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            pressure: Notify::new(),
            gauge,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the live events hold more than the limit.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Resolves the next time the count goes over the limit.
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }

    fn add(&self, n: usize) {
        let was = self.used.fetch_add(n, Ordering::Relaxed);
        self.gauge.inc_by(n as i64);
        if was <= self.limit && was + n > self.limit {
            self.pressure.notify_waiters();
        }
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        self.gauge.dec_by(n as i64);
    }
}

/// The owner of a frame's bytes: counted from its making until its last copy drops.
struct Counted {
    bytes: Vec<u8>,
    memory: Arc<Memory>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.memory.sub(self.bytes.capacity());
    }
}

fn counted(memory: &Arc<Memory>, bytes: Vec<u8>) -> Bytes {
    memory.add(bytes.capacity());
    Bytes::from_owner(Counted {
        bytes,
        memory: Arc::clone(memory),
    })
}

/// The 5-byte gRPC prefix of an uncompressed message of `len` bytes.
fn prefix(out: &mut Vec<u8>, len: usize) {
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// A recorded change, ready to send to every stream that watches it.
#[derive(Debug)]
pub struct Frame {
    pub seq: i64,
    /// The change's channel (`None`: the workspace's own change).
    pub channel: Option<Uuid>,
    /// The frame on the wire.
    pub bytes: Bytes,
    /// The workspace was deleted: nothing follows.
    pub last: bool,
    /// The Clerk user whose membership this change added, changed or removed: their watches
    /// check their access at once rather than at their next periodic check.
    pub member: Option<String>,
}

impl Frame {
    /// `change` as its watchers receive it, with its resume token and time.
    pub fn of(memory: &Arc<Memory>, change: &Change) -> Self {
        let head = pb::ChannelEvent {
            resume_token: changes::token(change.workspace_id, change.seq),
            recorded_at: Some(vbase_proto::timestamp_from_millis(
                change.recorded_at.timestamp_millis(),
            )),
            event: None,
        };
        let len = head.encoded_len() + change.payload.len();
        let mut bytes = Vec::with_capacity(5 + len);
        prefix(&mut bytes, len);
        head.encode(&mut bytes).expect("a Vec grows as needed");
        bytes.extend_from_slice(&change.payload);
        Self {
            seq: change.seq,
            channel: change.channel_id,
            bytes: counted(memory, bytes),
            last: ends_workspace(change),
            member: member_of(change),
        }
    }
}

/// The user whose membership `change` added, changed or removed.
fn member_of(change: &Change) -> Option<String> {
    if change.channel_id.is_some() {
        return None;
    }
    match pb::WorkspaceEvent::decode(change.payload.as_slice())
        .ok()?
        .event?
    {
        pb::workspace_event::Event::MemberChanged(m) => Some(m.clerk_user_id),
        pb::workspace_event::Event::MemberRemoved(user) => Some(user),
        _ => None,
    }
}

/// `change` is the workspace's deletion: nothing follows it in the log.
pub fn ends_workspace(change: &Change) -> bool {
    change.channel_id.is_none()
        && pb::WorkspaceEvent::decode(change.payload.as_slice()).is_ok_and(|e| {
            matches!(
                e.event,
                Some(pb::workspace_event::Event::WorkspaceDeleted(_))
            )
        })
}

/// `message` (an event this service makes itself, such as `caught_up`) as one frame.
pub fn message(memory: &Arc<Memory>, message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut bytes = Vec::with_capacity(5 + len);
    prefix(&mut bytes, len);
    message.encode(&mut bytes).expect("a Vec grows as needed");
    counted(memory, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbase_proto::workspace::v1::channel_event::Event;

    fn change(channel: Option<Uuid>, payload: Vec<u8>) -> Change {
        Change {
            workspace_id: Uuid::now_v7(),
            seq: 7,
            channel_id: channel,
            payload,
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_frame_is_the_event_with_its_token_and_the_memory_counts_it_until_the_last_copy_goes() {
        let memory = Memory::new(1 << 20, Gauge::default());
        let stored = pb::ChannelEvent {
            event: Some(Event::MessageDeleted("m1".into())),
            ..Default::default()
        }
        .encode_to_vec();
        let c = change(Some(Uuid::now_v7()), stored);
        let frame = Frame::of(&memory, &c);
        assert!(!frame.last);
        let held = memory.used();
        assert!(held >= frame.bytes.len(), "{held}");
        let bytes = frame.bytes.clone();
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let decoded = pb::ChannelEvent::decode(&bytes[5..]).unwrap();
        assert_eq!(decoded.resume_token, changes::token(c.workspace_id, 7));
        assert!(decoded.recorded_at.is_some());
        assert_eq!(decoded.event, Some(Event::MessageDeleted("m1".into())));
        drop(frame);
        assert_eq!(memory.used(), held, "a copy is still held");
        drop(bytes);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_deleted_workspace_is_the_last_frame() {
        let memory = Memory::new(1 << 20, Gauge::default());
        let deleted = pb::WorkspaceEvent {
            event: Some(pb::workspace_event::Event::WorkspaceDeleted(
                pb::WorkspaceDeleted {},
            )),
            ..Default::default()
        };
        assert!(Frame::of(&memory, &change(None, deleted.encode_to_vec())).last);
        let removed = pb::WorkspaceEvent {
            event: Some(pb::workspace_event::Event::MemberRemoved("user_1".into())),
            ..Default::default()
        };
        assert!(!Frame::of(&memory, &change(None, removed.encode_to_vec())).last);
    }
}
