-- Entries recorded before `message_id` existed (2026-12-03-000201) carry message bodies without
-- naming the message, so editing or deleting the message would not clear them. For each such
-- entry of a posted or edited message: the newest of a message that still exists, and that no
-- later entry names, gets its `message_id` (its body is the message's current text); every
-- other one loses its body (the message was deleted, or edited since).
--
-- A payload is an encoded `ChannelEvent` without its first two fields: the event's field
-- (3 `message_posted` or 4 `message_edited`, length-delimited: bytes 0x1a or 0x22), its length,
-- then the `Message` (field 1 its id, field 4 its body).

-- The varint at byte `o` (from 0) of `b`: its value and the byte after it (NULLs: malformed).
CREATE FUNCTION pg_temp.varint_at(b bytea, o int, OUT value bigint, OUT next int)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    byte int;
    shift int := 0;
BEGIN
    value := 0;
    next := o;
    LOOP
        IF next >= octet_length(b) OR shift > 56 THEN
            value := NULL;
            next := NULL;
            RETURN;
        END IF;
        byte := get_byte(b, next);
        value := value | ((byte & 127)::bigint << shift);
        next := next + 1;
        EXIT WHEN byte < 128;
        shift := shift + 7;
    END LOOP;
END $$;

-- `n` as a varint.
CREATE FUNCTION pg_temp.varint(n bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out bytea := '\x';
BEGIN
    LOOP
        IF n < 128 THEN
            RETURN out || set_byte('\x00'::bytea, 0, n::int);
        END IF;
        out := out || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
        n := n >> 7;
    END LOOP;
END $$;

-- The message of an entry and the entry without the message's body (NULLs: not a posted or
-- edited message, or not readable).
CREATE FUNCTION pg_temp.message_entry(p bytea, OUT id uuid, OUT cleared bytea)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    len record;
    tag record;
    field record;
    o int;
    start int;
    id_text text;
    rest bytea := '\x';
BEGIN
    IF octet_length(p) < 2 THEN
        RETURN;
    END IF;
    IF get_byte(p, 0) NOT IN (26, 34) THEN
        RETURN;
    END IF;
    len := pg_temp.varint_at(p, 1);
    IF len.value IS NULL OR len.next + len.value <> octet_length(p) THEN
        RETURN;
    END IF;
    o := len.next;
    WHILE o < octet_length(p) LOOP
        start := o;
        tag := pg_temp.varint_at(p, o);
        IF tag.value IS NULL THEN
            RETURN;
        END IF;
        o := tag.next;
        CASE tag.value & 7
            WHEN 0 THEN
                field := pg_temp.varint_at(p, o);
                o := field.next;
            WHEN 2 THEN
                field := pg_temp.varint_at(p, o);
                o := field.next + field.value;
            WHEN 1 THEN
                o := o + 8;
            WHEN 5 THEN
                o := o + 4;
            ELSE
                RETURN;
        END CASE;
        IF o IS NULL OR o > octet_length(p) THEN
            RETURN;
        END IF;
        IF tag.value = 10 THEN
            id_text := encode(substring(p FROM field.next + 1 FOR field.value::int), 'escape');
        END IF;
        IF tag.value <> 34 THEN
            rest := rest || substring(p FROM start + 1 FOR o - start);
        END IF;
    END LOOP;
    IF id_text ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' THEN
        id := id_text::uuid;
        cleared := substring(p FROM 1 FOR 1) || pg_temp.varint(octet_length(rest)) || rest;
    END IF;
END $$;

WITH old AS (
    SELECT c.workspace_id, c.seq, m.id, m.cleared
      FROM change_log c, LATERAL pg_temp.message_entry(c.payload) m
     WHERE c.message_id IS NULL AND c.channel_id IS NOT NULL
       AND substring(c.payload FROM 1 FOR 1) IN ('\x1a'::bytea, '\x22'::bytea)
       AND m.id IS NOT NULL),
kept AS (
    SELECT DISTINCT ON (o.id) o.workspace_id, o.seq
      FROM old o
     WHERE EXISTS (SELECT 1 FROM messages WHERE id = o.id)
       AND NOT EXISTS (SELECT 1 FROM change_log n WHERE n.message_id = o.id)
     ORDER BY o.id, o.seq DESC)
UPDATE change_log c
   SET message_id = CASE WHEN k.seq IS NULL THEN NULL ELSE o.id END,
       payload = CASE WHEN k.seq IS NULL THEN o.cleared ELSE c.payload END
  FROM old o
  LEFT JOIN kept k ON k.workspace_id = o.workspace_id AND k.seq = o.seq
 WHERE c.workspace_id = o.workspace_id AND c.seq = o.seq;

DROP FUNCTION pg_temp.message_entry(bytea);
DROP FUNCTION pg_temp.varint(bigint);
DROP FUNCTION pg_temp.varint_at(bytea, int);
