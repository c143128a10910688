-- The shipper reads how far the queue's ids have been handed out, so that a
-- claimer whose claims find nothing can still move its low-water id past
-- the rows shipped by others (outbox/lowwater.go). Reading a sequence hands
-- out no id.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.grant_shipper_privileges() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        RAISE WARNING 'pg2kafka: role pg2kafka_shipper does not exist, so it was granted nothing'
            USING HINT = 'A superuser or a role with CREATEROLE can run: CREATE ROLE pg2kafka_shipper NOLOGIN; '
                         'then the owner of schema pg2kafka runs: SELECT pg2kafka.grant_shipper_privileges();';
        RETURN false;
    END IF;
    GRANT USAGE ON SCHEMA pg2kafka TO pg2kafka_shipper;
    GRANT SELECT, DELETE, UPDATE (id) ON pg2kafka.outbound_event_queue TO pg2kafka_shipper;
    GRANT SELECT ON SEQUENCE pg2kafka.outbound_event_queue_id_seq TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_shipper_privileges();

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        REVOKE SELECT ON SEQUENCE pg2kafka.outbound_event_queue_id_seq FROM pg2kafka_shipper;
    END IF;
END
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.grant_shipper_privileges() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        RAISE WARNING 'pg2kafka: role pg2kafka_shipper does not exist, so it was granted nothing'
            USING HINT = 'A superuser or a role with CREATEROLE can run: CREATE ROLE pg2kafka_shipper NOLOGIN; '
                         'then the owner of schema pg2kafka runs: SELECT pg2kafka.grant_shipper_privileges();';
        RETURN false;
    END IF;
    GRANT USAGE ON SCHEMA pg2kafka TO pg2kafka_shipper;
    GRANT SELECT, DELETE, UPDATE (id) ON pg2kafka.outbound_event_queue TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
