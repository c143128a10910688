package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// dropTriggersSQL drops every trigger that calls a function of the pg2kafka
// schema, whatever the registry says (a table whose registry row was
// deleted by hand still has its trigger), and empties the queue and the
// dead-letter table, which are about to go.
const dropTriggersSQL = `
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS relation, tg.tgname
        FROM pg_trigger tg
        JOIN pg_proc p ON p.oid = tg.tgfoid
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'pg2kafka' AND NOT tg.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
    END LOOP;
    IF to_regclass('pg2kafka.dead_letter_events') IS NOT NULL THEN
        DELETE FROM pg2kafka.dead_letter_events;
    END IF;
    DELETE FROM pg2kafka.outbound_event_queue;
END
$$`

// Uninstall removes pg2kafka from the database: the trigger of every
// tracked table, then, migration by migration, everything pg2kafka
// installed, queued and dead-lettered events included, then Goose's version
// table and the pg2kafka schema. The tracked tables and their rows are left
// as they are. Stop the shippers first: events not yet shipped are
// discarded, and their count logged. The roles pg2kafka_shipper and
// pg2kafka_emitter, the cluster's, are left for their owner to drop.
// Should someone have put an
// object of their own in the pg2kafka schema, or made one depend on
// pg2kafka's, Uninstall fails rather than drop it. It is not one
// transaction (each migration rolls back in its own): after a failure, fix
// its cause and call it again, and it carries on where it stopped.
func Uninstall(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	var schema bool
	if err := pool.QueryRow(ctx, `SELECT to_regnamespace('pg2kafka') IS NOT NULL`).Scan(&schema); err != nil {
		return fmt.Errorf("outbox: uninstall: %w", err)
	}
	if !schema {
		logger.Info("nothing to uninstall: pg2kafka is not installed in this database")
		return nil
	}
	var installed bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('pg2kafka.outbound_event_queue') IS NOT NULL`).Scan(&installed); err != nil {
		return fmt.Errorf("outbox: uninstall: %w", err)
	}
	if installed {
		var discarded int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			// Not while a replica migrates.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockID); err != nil {
				return err
			}
			// What dropTriggersSQL discards. The dead-letter table came
			// with migration 3, and may be gone already.
			counts := []string{`SELECT count(*) FROM pg2kafka.outbound_event_queue`}
			var deadLetters bool
			if err := tx.QueryRow(ctx, `SELECT to_regclass('pg2kafka.dead_letter_events') IS NOT NULL`).Scan(&deadLetters); err != nil {
				return err
			}
			if deadLetters {
				counts = append(counts, `SELECT count(*) FROM pg2kafka.dead_letter_events`)
			}
			for _, sql := range counts {
				var n int64
				if err := tx.QueryRow(ctx, sql).Scan(&n); err != nil {
					return err
				}
				discarded += n
			}
			_, err := tx.Exec(ctx, dropTriggersSQL)
			return err
		})
		if err != nil {
			return fmt.Errorf("outbox: uninstall: drop triggers: %w", err)
		}
		if discarded > 0 {
			logger.Warn("discarding events that were never shipped", slog.Int64("events", discarded))
		}
	}
	if err := MigrateDownTo(ctx, pool, 0); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "2BP01" { // dependent_objects_still_exist
			return fmt.Errorf("%w: %s; drop them, or make them independent of pg2kafka, and uninstall again", err, pgErr.Detail)
		}
		return err
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+VersionTable); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS pg2kafka`)
		return err
	})
	if err != nil {
		return fmt.Errorf("outbox: uninstall: drop schema pg2kafka: %w", err)
	}
	logger.Info("pg2kafka uninstalled")
	return nil
}
