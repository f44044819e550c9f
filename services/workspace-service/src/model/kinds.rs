//! The kinds of rooms and of the items they hold, each with its Liveblocks room prefix: the
//! one place these names are spelled.

use uuid::Uuid;

/// A room's kind; stored as text in `rooms.kind` (the table's CHECK lists the same four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// Holds documents.
    Document,
    /// Holds code files.
    Code,
    /// Holds whiteboards.
    Whiteboard,
    /// Holds meetings.
    Conference,
}

/// Unknown kind text (in the database or in a request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown room kind {0:?}")]
pub struct UnknownKind(pub String);

impl RoomKind {
    /// Every kind.
    pub const ALL: [RoomKind; 4] = [
        RoomKind::Document,
        RoomKind::Code,
        RoomKind::Whiteboard,
        RoomKind::Conference,
    ];

    /// The text stored in `rooms.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Document => "document",
            RoomKind::Code => "code",
            RoomKind::Whiteboard => "whiteboard",
            RoomKind::Conference => "conference",
        }
    }

    /// Reads `rooms.kind`. Unknown text is an error, never a default kind.
    pub fn from_db(text: &str) -> Result<Self, UnknownKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }

    /// The item kind the room holds (conference rooms hold meetings instead).
    pub fn item_kind(self) -> Option<ItemKind> {
        ItemKind::ALL.into_iter().find(|i| i.room_kind() == self)
    }

    /// The room's own Liveblocks room id, `room:{id}`.
    pub fn liveblocks_room(id: Uuid) -> String {
        format!("{}:{id}", ROOM_PREFIX)
    }
}

/// Liveblocks prefix of a room's own (presence) room.
pub const ROOM_PREFIX: &str = "room";

/// The three kinds of item that live in rooms and have a Liveblocks room each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// A document (in a document room).
    Document,
    /// A code file (in a code room).
    CodeFile,
    /// A whiteboard (in a whiteboard room).
    Whiteboard,
}

impl ItemKind {
    /// Every kind.
    pub const ALL: [ItemKind; 3] = [ItemKind::Document, ItemKind::CodeFile, ItemKind::Whiteboard];

    /// Table holding this kind.
    pub fn table(self) -> &'static str {
        match self {
            ItemKind::Document => "documents",
            ItemKind::CodeFile => "code_files",
            ItemKind::Whiteboard => "whiteboards",
        }
    }

    /// What one item of this kind is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            ItemKind::Document => "document",
            ItemKind::CodeFile => "code file",
            ItemKind::Whiteboard => "whiteboard",
        }
    }

    /// Liveblocks room prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            ItemKind::Document => "doc",
            ItemKind::CodeFile => "code",
            ItemKind::Whiteboard => "whiteboard",
        }
    }

    /// The room kind that holds this item kind.
    pub fn room_kind(self) -> RoomKind {
        match self {
            ItemKind::Document => RoomKind::Document,
            ItemKind::CodeFile => RoomKind::Code,
            ItemKind::Whiteboard => RoomKind::Whiteboard,
        }
    }

    /// `{prefix}:{id}`.
    pub fn liveblocks_room(self, id: Uuid) -> String {
        format!("{}:{id}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_text_is_an_error() {
        for k in RoomKind::ALL {
            assert_eq!(RoomKind::from_db(k.as_str()), Ok(k));
        }
        assert!(RoomKind::from_db("lounge").is_err());
        for i in ItemKind::ALL {
            assert_eq!(i.room_kind().item_kind(), Some(i));
        }
        assert_eq!(RoomKind::Conference.item_kind(), None);
    }
}
