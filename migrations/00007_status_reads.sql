-- The shipper's status page, metrics and live stream read which tables are
-- tracked and how many dead letters each has. They need the names only:
-- column privileges keep the dead letters' data out of the shipper's reach.

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
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_shipper_privileges();

-- +goose Down

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
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        REVOKE SELECT (table_schema, table_name) ON pg2kafka.tracked_tables FROM pg2kafka_shipper;
        REVOKE SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events FROM pg2kafka_shipper;
    END IF;
END
$$;
-- +goose StatementEnd
