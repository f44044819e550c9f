//! Each record's proto stays within what `model::paging` counts for it in a page.

use super::channels::ChannelRecord;
use super::items::{ItemRecord, item};
use super::meetings::MeetingRecord;
use super::memberships::MemberRecord;
use super::messages::MessageRecord;
use super::rooms::RoomRecord;
use crate::domain::MAX_NAME;
use crate::model::paging::WireSize;
use crate::model::{ItemKind, RoomKind};
use chrono::DateTime;
use prost::Message;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// What a row adds to a page: its message and the repeated field's tag and length.
fn in_a_page(m: &impl Message) -> usize {
    let len = m.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

#[test]
fn a_rows_wire_size_bounds_its_encoding_in_a_page() {
    let long = "😀".repeat(MAX_NAME);
    let at = DateTime::from_timestamp(4_000_000_000, 999_999_999).unwrap();
    let id = Uuid::now_v7();
    let message = MessageRecord {
        id,
        channel_id: id,
        author_clerk_id: "user_".to_owned() + &"x".repeat(60),
        body: "😀".repeat(8_192),
        author_deleted: true,
        created_at: at,
        edited_at: Some(at),
    };
    assert!(in_a_page(&pb::Message::from(message.clone())) <= message.wire_size());
    let channel = ChannelRecord {
        id,
        workspace_id: id,
        name: "c".repeat(80),
        created_by: long.clone(),
        created_at: at,
        updated_at: at,
    };
    assert!(in_a_page(&pb::Channel::from(channel.clone())) <= channel.wire_size());
    let room = RoomRecord {
        id,
        workspace_id: id,
        kind: RoomKind::Whiteboard,
        name: long.clone(),
        created_by: long.clone(),
        created_at: at,
        updated_at: at,
    };
    assert!(in_a_page(&pb::Room::from(room.clone())) <= room.wire_size());
    let record = ItemRecord {
        id,
        room_id: id,
        name: long.clone(),
        language: "l".repeat(40),
        created_by: long.clone(),
        created_at: at,
        updated_at: at,
    };
    for kind in [ItemKind::Document, ItemKind::CodeFile, ItemKind::Whiteboard] {
        assert!(in_a_page(&item(kind, record.clone())) <= record.wire_size());
    }
    let meeting = MeetingRecord {
        id,
        room_id: id,
        title: long.clone(),
        starts_at: at,
        ends_at: at,
        cancelled_at: Some(at),
        created_by: long.clone(),
        created_at: at,
    };
    assert!(in_a_page(&pb::Meeting::from(meeting.clone())) <= meeting.wire_size());
    let member = MemberRecord {
        clerk_user_id: long.clone(),
        role: "org:admin".into(),
        source_updated_at: at,
    };
    assert!(in_a_page(&pb::Member::from(member.clone())) <= member.wire_size());
}
