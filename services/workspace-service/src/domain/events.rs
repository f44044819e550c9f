//! What the change log stores and the API answers with: each record becomes its proto in the
//! module that defines it (`From<ChannelRecord> for pb::Channel`, `items::item`, ...), so a write
//! builds its change-log payload from the record it returns, in the domain. This module holds
//! what they share and depends on none of them.

use chrono::{DateTime, Utc};

/// A timestamp as a proto (millisecond precision, as every timestamp the API returns).
pub fn timestamp(dt: DateTime<Utc>) -> prost_types::Timestamp {
    vbase_proto::timestamp_from_millis(dt.timestamp_millis())
}
