//! Diesel table definitions (mirrors `migrations/`).

diesel::table! {
    users (clerk_id) {
        clerk_id -> Text,
        name -> Text,
        email -> Text,
        image_url -> Text,
        source_updated_at -> Nullable<Timestamptz>,
        claims_seen_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        source_event_time -> Timestamptz,
        source_event_id -> Text,
        tokens_revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    processed_events (event_id) {
        event_id -> Text,
        processed_at -> Timestamptz,
    }
}
