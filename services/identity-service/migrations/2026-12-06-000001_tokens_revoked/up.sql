-- When Clerk last revoked all the user's sessions (a ban): every user token issued before it
-- (or up to 5 s after) is refused. NULL: never. Only ever moves later; the update trigger of
-- `user_notifications` tells the user caches.
ALTER TABLE users ADD COLUMN tokens_revoked_at timestamptz;
