-- The shipper's least privilege. Migrations and setup() run as the owner of
-- the pg2kafka schema; the shipper needs far less, and pg2kafka_shipper is a
-- group role holding exactly that. A login role made a member of it can ship:
--
--     CREATE ROLE app_shipper LOGIN PASSWORD '…' IN ROLE pg2kafka_shipper;
--
-- Roles belong to the cluster, not to a database: pg2kafka_shipper is
-- shared by every database of the cluster where pg2kafka is installed, and
-- holds the grants of each. A member can ship from any of them it may
-- connect to, so confine each login role to its database with CONNECT
-- (REVOKE CONNECT ON DATABASE … FROM PUBLIC; GRANT CONNECT … TO app_shipper)
-- or pg_hba.conf. CONNECT is never granted to the group for that reason.

-- +goose Up

-- grant_shipper_privileges() grants pg2kafka_shipper what the shipper needs
-- in this database, all of it and nothing more, and reports whether it
-- could. It is the one list of those privileges: a migration that changes
-- them replaces it and calls it. Its owner calls it again after creating the
-- role by hand, when the migration could not create it.
--
-- What the shipper does, and what it needs for it:
-- * claims events with SELECT … FOR UPDATE SKIP LOCKED and deletes them,
--   RETURNING their columns: SELECT and DELETE on the queue, and UPDATE on
--   at least one of its columns, which Postgres requires for FOR UPDATE.
--   That column is id: it is GENERATED ALWAYS, so the only UPDATE the
--   privilege allows is SET id = DEFAULT; the shipper never updates.
-- * leases lanes with advisory locks and counts shippers in pg_locks and
--   pg_database: granted to PUBLIC by default.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.grant_shipper_privileges() RETURNS boolean
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
    RETURN true;
END
$$;
-- +goose StatementEnd

-- Only the owner may call them: functions are executable by PUBLIC unless
-- told otherwise, and the shipper, with USAGE on the schema, would reach them.
REVOKE EXECUTE ON FUNCTION pg2kafka.grant_shipper_privileges() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.setup(regclass, text) FROM PUBLIC;

-- The role is created if it is missing and the migrating role may create
-- roles. If it may not, the migration goes on without it and the warning
-- above says what to do. Two databases of the cluster migrating at once may
-- both find the role missing; the second to create it fails on the unique
-- name, and takes the first's.
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        BEGIN
            CREATE ROLE pg2kafka_shipper NOLOGIN;
            COMMENT ON ROLE pg2kafka_shipper IS
                'pg2kafka''s shipper: claims and deletes queued events. Grant it to the shipper''s login role.';
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'pg2kafka: % may not create roles, so role pg2kafka_shipper was not created', current_user;
        END;
    END IF;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_shipper_privileges();

-- +goose Down
-- The grants go; the role stays. It is the cluster's, other databases may
-- use it, and its members would silently lose it: drop it by hand once no
-- database uses it (DROP ROLE refuses while any still grants it something).
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        REVOKE ALL ON pg2kafka.outbound_event_queue FROM pg2kafka_shipper;
        REVOKE USAGE ON SCHEMA pg2kafka FROM pg2kafka_shipper;
    END IF;
END
$$;
-- +goose StatementEnd
GRANT EXECUTE ON FUNCTION pg2kafka.setup(regclass, text) TO PUBLIC;
DROP FUNCTION pg2kafka.grant_shipper_privileges();
