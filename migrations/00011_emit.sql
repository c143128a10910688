-- emit(): the application's own events (OrderPlaced, PaymentFailed), queued
-- in the transaction that makes them true, and shipped once it commits, as
-- the record the application wrote: its topic, its key, its payload for the
-- value, its headers. Rolled back, or in a savepoint rolled back, the event
-- was never queued.
--
-- An emitted event is a queue row like a row change, so it takes the same
-- path with the same guarantees (at-least-once, lanes and order per key,
-- dead letters), in the columns the queue already has; the trigger's INSERT
-- stays as it was. The row of an emitted event holds:
--
--   statement     'EVENT'
--   external_id   the key, so that an event shares its lane, and its order,
--                 with the row changes of the same key
--   topic         the topic
--   table_schema  '' (no schema has that name) and table_name the topic:
--                 what the shipper pauses, retries and reports on for a
--                 table, it does per topic for emitted events
--   data          the payload: a JSON string holds the payload's exact text
--                 (json and text payloads, and a jsonb string), any other
--                 JSON value is the jsonb payload itself
--   old           the headers given, an object of strings, or null

-- +goose Up

-- One row: settings the owner of schema pg2kafka changes with UPDATE. A
-- table rather than a GUC, which any session may SET for itself: a limit the
-- caller of emit() could lift would not be one.
CREATE TABLE pg2kafka.settings (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    emit_max_bytes integer NOT NULL DEFAULT 1048576
        CONSTRAINT emit_max_bytes_positive CHECK (emit_max_bytes > 0)
);
INSERT INTO pg2kafka.settings DEFAULT VALUES;

COMMENT ON TABLE pg2kafka.settings IS
    'pg2kafka''s settings in this database, one row; the owner of schema pg2kafka changes them with UPDATE.';
COMMENT ON COLUMN pg2kafka.settings.emit_max_bytes IS
    'The largest payload pg2kafka.emit() accepts, in bytes of its text. Default 1048576 (1 MiB), Kafka''s default max.message.bytes: raise the topics'' with it.';

COMMENT ON COLUMN pg2kafka.outbound_event_queue.statement IS
    'INSERT, UPDATE, DELETE or SNAPSHOT for a row change; EVENT for an event of pg2kafka.emit().';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.table_schema IS
    'The schema of the changed table; '''' for an event of pg2kafka.emit().';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.table_name IS
    'The changed table; the topic, for an event of pg2kafka.emit().';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.data IS
    'The row''s values; for an event of pg2kafka.emit(), its payload (a JSON string: the payload''s exact text).';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.old IS
    'With include_old: the previous values of an UPDATE''s changed columns, or the row a DELETE removed; for an event of pg2kafka.emit(), its headers.';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.topic IS
    'The topic setup(topic => …) or pg2kafka.emit() chose for the event; null for the default.';

ALTER TABLE pg2kafka.dead_letter_events
    DROP CONSTRAINT dead_letter_events_statement_check,
    ADD CONSTRAINT dead_letter_events_statement_check CHECK (statement IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT', 'EVENT'));

-- emit() is written for the path of a good event, which costs an
-- application one plpgsql call: one IF of simple expressions (which Postgres
-- evaluates without its executor), then one statement, the INSERT, which
-- reads the limit and the tracked topics itself. Only when the IF is false,
-- or the INSERT inserts nothing, does refuse_emitted() work out why. Every
-- name is qualified, as in the trigger (migration 6): emit() runs as its
-- owner with its caller's search_path, as a SET clause would cost each call
-- a configuration change.
--
-- emittable() is the IF's test of the topic and the headers, shared by the
-- overloads. A plain SQL expression, so Postgres inlines it into their IF
-- rather than calling it. The headers' values are tested in strict mode,
-- which does not unwrap an array value into its elements; their names are
-- looked at one by one (keyvalue(), several times the cost) only when their
-- text holds "pg2kafka-" somewhere, lower() and flag "i" folding case in the
-- same collation, the database's. Not {1,249} in the topic's pattern:
-- Postgres expands a bounded repetition into as many states, and matching
-- it cost 100 µs a call.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.emittable(topic pg_catalog.text, headers pg_catalog.jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT pg_catalog.octet_length(topic) OPERATOR(pg_catalog.<=) 249
   AND topic OPERATOR(pg_catalog.~) '^[a-zA-Z0-9._-]+$'
   AND topic OPERATOR(pg_catalog.<>) '.' AND topic OPERATOR(pg_catalog.<>) '..'
   AND NOT pg_catalog.starts_with(topic, 'pg2kafka.')
   AND (headers IS NULL
        OR pg_catalog.jsonb_typeof(headers) OPERATOR(pg_catalog.=) 'object'
           AND NOT pg_catalog.jsonb_path_exists(headers, 'strict $.* ? (@.type() != "string")')
           AND (pg_catalog.strpos(pg_catalog.lower(headers::pg_catalog.text), 'pg2kafka-') OPERATOR(pg_catalog.=) 0
                OR NOT pg_catalog.jsonb_path_exists(headers, '$.keyvalue() ? (@.key like_regex "^pg2kafka-" flag "i")')))
$$;
-- +goose StatementEnd

-- refuse_emitted raises the error of the first check an event fails, the
-- payload's own checks done: emit() calls it when its IF was false or its
-- INSERT inserted nothing. Its caller runs as the owner, so it does too.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.refuse_emitted(
    topic pg_catalog.text, value_bytes pg_catalog.int4, headers pg_catalog.jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    max_bytes pg_catalog.int4;
    taken_by  pg_catalog.text;
    bad_key   pg_catalog.text;
    bad_type  pg_catalog.text;
BEGIN
    IF topic IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: topic must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Name the Kafka topic the event goes to, e.g. topic => ''shop.order-events''.';
    END IF;
    IF pg_catalog.octet_length(topic) OPERATOR(pg_catalog.>) 249
       OR NOT topic OPERATOR(pg_catalog.~) '^[a-zA-Z0-9._-]+$'
       OR topic OPERATOR(pg_catalog.=) '.' OR topic OPERATOR(pg_catalog.=) '..' THEN
        RAISE EXCEPTION 'pg2kafka.emit: topic % is not a name Kafka accepts', pg_catalog.to_json(topic)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A topic name is 1 to 249 characters, each an ASCII letter, a digit, ''.'', ''_'' or ''-'', and not "." or "..".';
    END IF;
    IF pg_catalog.starts_with(topic, 'pg2kafka.') THEN
        RAISE EXCEPTION 'pg2kafka.emit: topic % is reserved for row changes', pg_catalog.to_json(topic)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Topics named pg2kafka.… carry the row changes of tracked tables; emit to a topic of the application''s own.';
    END IF;

    IF headers IS NOT NULL THEN
        IF pg_catalog.jsonb_typeof(headers) OPERATOR(pg_catalog.<>) 'object' THEN
            RAISE EXCEPTION 'pg2kafka.emit: headers must be a JSON object of strings, not a JSON %', pg_catalog.jsonb_typeof(headers)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example headers => ''{"event-type":"OrderPaid"}''; null for none.';
        END IF;
        SELECT h.key, pg_catalog.jsonb_typeof(h.value) INTO bad_key, bad_type
        FROM pg_catalog.jsonb_each(headers) AS h
        WHERE pg_catalog.jsonb_typeof(h.value) OPERATOR(pg_catalog.<>) 'string'
           OR pg_catalog.starts_with(pg_catalog.lower(h.key), 'pg2kafka-')
        LIMIT 1;
        IF bad_type OPERATOR(pg_catalog.=) 'string' THEN
            RAISE EXCEPTION 'pg2kafka.emit: headers: % is a header of pg2kafka''s own', pg_catalog.to_json(bad_key)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'pg2kafka sets the headers named pg2kafka-… itself; name the application''s headers otherwise.';
        ELSIF bad_type IS NOT NULL THEN
            RAISE EXCEPTION 'pg2kafka.emit: headers: the value of % is a JSON %, not a string', pg_catalog.to_json(bad_key), bad_type
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Header values are strings: write {"attempt":"3"}, not {"attempt":3}.';
        END IF;
    END IF;

    SELECT s.emit_max_bytes INTO max_bytes FROM pg2kafka.settings AS s;
    IF max_bytes IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: pg2kafka.settings has no row, so no payload limit'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The owner of schema pg2kafka restores it: INSERT INTO pg2kafka.settings DEFAULT VALUES;';
    END IF;
    IF value_bytes OPERATOR(pg_catalog.>) max_bytes THEN
        RAISE EXCEPTION 'pg2kafka.emit: payload is % bytes, over the limit of % bytes', value_bytes, max_bytes
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'The owner of schema pg2kafka sets the limit: UPDATE pg2kafka.settings SET emit_max_bytes = …; '
                         'raise the topic''s max.message.bytes with it.';
    END IF;
    SELECT t.relation::pg_catalog.text INTO taken_by FROM pg2kafka.tracked_tables AS t
    WHERE t.topic OPERATOR(pg_catalog.=) topic LIMIT 1;
    IF taken_by IS NOT NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: topic % carries the row changes of table %', pg_catalog.to_json(topic), taken_by
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Emit to a topic of the application''s own, so that consumers of the table''s topic only ever read its row changes.';
    END IF;
    -- The INSERT's snapshot saw a limit or a table's topic that a commit
    -- since has changed.
    RAISE EXCEPTION 'pg2kafka.emit: the event was not queued: pg2kafka.settings or the tracked tables changed meanwhile'
        USING ERRCODE = 'serialization_failure', HINT = 'Emit it again.';
END
$$;
-- +goose StatementEnd

-- emit() queues an event in the caller's transaction. The payload is the
-- record's value as given: a jsonb payload ships as jsonb prints it (keys
-- in jsonb's order, no spaces), a json or text one byte for byte. Each runs
-- as its owner, like the trigger, and writes nothing but the one queue row:
-- the statement is always EVENT, so no caller can queue a row change.
--
-- pg_current_xact_id() gives the transaction its id before the INSERT takes
-- the event's: when emit() is the transaction's first write, Postgres would
-- otherwise assign the xid only afterwards, and for that moment a snapshot
-- would not show the transaction that holds the id as running
-- (outbox/lowwater.go).
--
-- Each overload holds its own copy of the INSERT rather than calling a
-- shared function: one plpgsql call per event, not two.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.emit(
    topic pg_catalog.text, key pg_catalog.text, payload pg_catalog.jsonb, headers pg_catalog.jsonb DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_variable
DECLARE
    value  pg_catalog.text := payload::pg_catalog.text;
    xid    pg_catalog.xid8;
    queued pg_catalog.int8;
BEGIN
    IF value IS NOT NULL AND pg2kafka.emittable(topic, headers) THEN
        xid := pg_catalog.pg_current_xact_id();
        -- A string is kept as its text, which is how data tells the exact
        -- text of a payload: a jsonb string is its own text.
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        SELECT key, '', topic, 'EVENT',
               CASE WHEN pg_catalog.jsonb_typeof(payload) OPERATOR(pg_catalog.=) 'string'
                    THEN pg_catalog.to_jsonb(value) ELSE payload END,
               topic, headers
        FROM pg2kafka.settings AS s
        WHERE pg_catalog.octet_length(value) OPERATOR(pg_catalog.<=) s.emit_max_bytes
          AND NOT EXISTS (SELECT FROM pg2kafka.tracked_tables AS t WHERE t.topic OPERATOR(pg_catalog.=) topic)
        RETURNING id INTO queued;
        IF queued IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: payload must not be null'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'For a JSON null, pass payload => ''null''.';
    END IF;
    PERFORM pg2kafka.refuse_emitted(topic, pg_catalog.octet_length(value), headers);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION pg2kafka.emit(
    topic pg_catalog.text, key pg_catalog.text, payload pg_catalog.json, headers pg_catalog.jsonb DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_variable
DECLARE
    value  pg_catalog.text := payload::pg_catalog.text;
    xid    pg_catalog.xid8;
    queued pg_catalog.int8;
BEGIN
    IF value IS NOT NULL AND pg2kafka.emittable(topic, headers) THEN
        xid := pg_catalog.pg_current_xact_id();
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        SELECT key, '', topic, 'EVENT', pg_catalog.to_jsonb(value), topic, headers
        FROM pg2kafka.settings AS s
        WHERE pg_catalog.octet_length(value) OPERATOR(pg_catalog.<=) s.emit_max_bytes
          AND NOT EXISTS (SELECT FROM pg2kafka.tracked_tables AS t WHERE t.topic OPERATOR(pg_catalog.=) topic)
        RETURNING id INTO queued;
        IF queued IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: payload must not be null'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'For a JSON null, pass payload => ''null''.';
    END IF;
    PERFORM pg2kafka.refuse_emitted(topic, pg_catalog.octet_length(value), headers);
END
$$;
-- +goose StatementEnd

-- The text overload is the one an untyped literal chooses. Postgres 15 has
-- no test of JSON that does not raise, hence the block, which costs a
-- subtransaction (without an xid: it writes nothing).
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.emit(
    topic pg_catalog.text, key pg_catalog.text, payload pg_catalog.text, headers pg_catalog.jsonb DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_variable
DECLARE
    problem pg_catalog.text;
    valid   boolean;
    xid     pg_catalog.xid8;
    queued  pg_catalog.int8;
BEGIN
    IF payload IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.emit: payload must not be null'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'For a JSON null, pass payload => ''null''.';
    END IF;
    BEGIN
        -- An assignment, not PERFORM: a simple expression, not a query.
        valid := payload::pg_catalog.json IS NOT NULL;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        GET STACKED DIAGNOSTICS problem = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION 'pg2kafka.emit: payload is not JSON: %', problem
            USING ERRCODE = 'invalid_text_representation',
                  HINT = 'The payload is the record''s value, a JSON text such as ''{"type":"OrderPaid","order":42}''.';
    END;
    IF pg2kafka.emittable(topic, headers) THEN
        xid := pg_catalog.pg_current_xact_id();
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        SELECT key, '', topic, 'EVENT', pg_catalog.to_jsonb(payload), topic, headers
        FROM pg2kafka.settings AS s
        WHERE pg_catalog.octet_length(payload) OPERATOR(pg_catalog.<=) s.emit_max_bytes
          AND NOT EXISTS (SELECT FROM pg2kafka.tracked_tables AS t WHERE t.topic OPERATOR(pg_catalog.=) topic)
        RETURNING id INTO queued;
        IF queued IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    PERFORM pg2kafka.refuse_emitted(topic, pg_catalog.octet_length(payload), headers);
END
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION pg2kafka.emit(text, text, jsonb, jsonb) IS
    'Queues an event in this transaction: shipped to topic with key, payload as the value and headers, once the transaction commits.';
COMMENT ON FUNCTION pg2kafka.emit(text, text, json, jsonb) IS
    'Queues an event in this transaction, the json payload shipped byte for byte as the value.';
COMMENT ON FUNCTION pg2kafka.emit(text, text, text, jsonb) IS
    'Queues an event in this transaction, the payload (JSON text) shipped byte for byte as the value.';

-- grant_emitter_privileges() grants pg2kafka_emitter what emitting needs,
-- and reports whether it could; its owner calls it again after creating the
-- role by hand, as for the shipper (migration 2). Calling a function takes
-- USAGE on its schema; USAGE alone reaches nothing else there.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.grant_emitter_privileges() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_emitter') THEN
        RAISE WARNING 'pg2kafka: role pg2kafka_emitter does not exist, so it was granted nothing'
            USING HINT = 'A superuser or a role with CREATEROLE can run: CREATE ROLE pg2kafka_emitter NOLOGIN; '
                         'then the owner of schema pg2kafka runs: SELECT pg2kafka.grant_emitter_privileges();';
        RETURN false;
    END IF;
    GRANT USAGE ON SCHEMA pg2kafka TO pg2kafka_emitter;
    GRANT EXECUTE ON FUNCTION pg2kafka.emit(text, text, jsonb, jsonb), pg2kafka.emit(text, text, json, jsonb),
                              pg2kafka.emit(text, text, text, jsonb) TO pg2kafka_emitter;
    RETURN true;
END
$$;
-- +goose StatementEnd

REVOKE EXECUTE ON FUNCTION pg2kafka.grant_emitter_privileges() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.emittable(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.refuse_emitted(text, integer, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.emit(text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.emit(text, text, json, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.emit(text, text, text, jsonb) FROM PUBLIC;

-- As for pg2kafka_shipper (migration 2): created if missing and the
-- migrating role may, shared by the cluster's databases. A member may emit
-- in every database of the cluster where pg2kafka is installed and it may
-- connect to.
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_emitter') THEN
        BEGIN
            CREATE ROLE pg2kafka_emitter NOLOGIN;
            COMMENT ON ROLE pg2kafka_emitter IS
                'May call pg2kafka.emit(). Grant it to the application roles that emit events.';
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'pg2kafka: % may not create roles, so role pg2kafka_emitter was not created', current_user;
        END;
    END IF;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_emitter_privileges();

-- +goose Down
-- An older shipper would take an emitted event for a change of the table
-- named by its topic: going down waits until none is left.
-- +goose StatementBegin
DO $$
DECLARE
    queued bigint;
    dead   bigint;
BEGIN
    SELECT count(*) INTO queued FROM pg2kafka.outbound_event_queue WHERE statement = 'EVENT';
    SELECT count(*) INTO dead FROM pg2kafka.dead_letter_events WHERE statement = 'EVENT';
    IF queued > 0 OR dead > 0 THEN
        RAISE EXCEPTION 'pg2kafka: % events of pg2kafka.emit() are queued and % dead-lettered, which versions before 11 cannot ship', queued, dead
            USING HINT = 'Let the shipper ship them (requeue the dead letters, or delete them) before migrating below version 11.';
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_emitter') THEN
        REVOKE USAGE ON SCHEMA pg2kafka FROM pg2kafka_emitter;
    END IF;
END
$$;
-- +goose StatementEnd
DROP FUNCTION pg2kafka.grant_emitter_privileges();
DROP FUNCTION pg2kafka.emit(text, text, jsonb, jsonb);
DROP FUNCTION pg2kafka.emit(text, text, json, jsonb);
DROP FUNCTION pg2kafka.emit(text, text, text, jsonb);
DROP FUNCTION pg2kafka.refuse_emitted(text, integer, jsonb);
DROP FUNCTION pg2kafka.emittable(text, jsonb);
ALTER TABLE pg2kafka.dead_letter_events
    DROP CONSTRAINT dead_letter_events_statement_check,
    ADD CONSTRAINT dead_letter_events_statement_check CHECK (statement IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT'));
COMMENT ON COLUMN pg2kafka.outbound_event_queue.statement IS NULL;
COMMENT ON COLUMN pg2kafka.outbound_event_queue.table_schema IS NULL;
COMMENT ON COLUMN pg2kafka.outbound_event_queue.table_name IS NULL;
COMMENT ON COLUMN pg2kafka.outbound_event_queue.data IS NULL;
COMMENT ON COLUMN pg2kafka.outbound_event_queue.old IS
    'With include_old: the previous values of an UPDATE''s changed columns, or the row a DELETE removed.';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.topic IS
    'The topic setup(topic => …) chose for the event; null for the default.';
DROP TABLE pg2kafka.settings;
