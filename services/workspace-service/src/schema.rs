//! Diesel table definitions (mirrors `migrations/`).

diesel::table! {
    workspaces (id) {
        id -> Uuid,
        clerk_org_id -> Text,
        name -> Text,
        slug -> Nullable<Text>,
        owner_clerk_id -> Nullable<Text>,
        source_updated_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        source_event_time -> Timestamptz,
        source_event_id -> Text,
        clerk_created_at -> Timestamptz,
    }
}

diesel::table! {
    memberships (workspace_id, clerk_user_id) {
        workspace_id -> Uuid,
        clerk_org_id -> Text,
        clerk_user_id -> Text,
        role -> Text,
        deleted -> Bool,
        source_updated_at -> Timestamptz,
    }
}

diesel::table! {
    channels (workspace_id, id) {
        id -> Uuid,
        workspace_id -> Uuid,
        name -> Text,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    messages (workspace_id, id) {
        id -> Uuid,
        workspace_id -> Uuid,
        channel_id -> Uuid,
        author_clerk_id -> Text,
        body -> Text,
        author_deleted -> Bool,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    rooms (workspace_id, id) {
        id -> Uuid,
        workspace_id -> Uuid,
        kind -> Text,
        name -> Text,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    meetings (workspace_id, id) {
        id -> Uuid,
        workspace_id -> Uuid,
        room_id -> Uuid,
        title -> Text,
        starts_at -> Timestamptz,
        ends_at -> Timestamptz,
        cancelled_at -> Nullable<Timestamptz>,
        created_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(workspaces, channels, messages, rooms, meetings);
diesel::joinable!(channels -> workspaces (workspace_id));
diesel::joinable!(rooms -> workspaces (workspace_id));
