package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/pg2kafka/pg2kafka/migrations"
)

// VersionTable is where Goose records the applied migrations. It lives in the
// pg2kafka schema so that pg2kafka's versions never mix with the
// application's own Goose history.
const VersionTable = "pg2kafka.goose_db_version"

// migrationLockID is the advisory lock key that serialises pg2kafka's
// migrations; it differs from Goose's default so that an application's own
// Goose migrations neither wait for pg2kafka's nor are waited for.
const migrationLockID int64 = 0x706732_6b61666b // "pg2kafk"

// Migrate brings the pg2kafka schema up to the newest version. It is safe to
// run from several replicas at once: a session advisory lock lets one migrate
// while the others wait, then find nothing left to do.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	return withProvider(ctx, pool, func(p *goose.Provider) error {
		results, err := p.Up(ctx)
		for _, r := range results {
			logger.Info("applied migration", slog.Int64("version", r.Source.Version), slog.String("file", r.Source.Path), slog.Duration("took", r.Duration))
		}
		return err
	})
}

// MigrateDownTo rolls the pg2kafka schema back to version (0: nothing
// installed, every trigger on user tables removed, user tables untouched).
func MigrateDownTo(ctx context.Context, pool *pgxpool.Pool, version int64) error {
	return withProvider(ctx, pool, func(p *goose.Provider) error {
		_, err := p.DownTo(ctx, version)
		return err
	})
}

func withProvider(ctx context.Context, pool *pgxpool.Pool, fn func(*goose.Provider) error) error {
	// Goose cannot create its version table in a schema that does not exist.
	// CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent twin (the
	// loser fails on pg_namespace's unique index), hence the lock.
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS pg2kafka`)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
		return fmt.Errorf("outbox: migrate: this role may not install pg2kafka: migrate as the owner of the database, and run a shipper of least privilege (pg2kafka_shipper) without PERFORM_MIGRATIONS: %w", err)
	}
	if err != nil {
		return fmt.Errorf("outbox: migrate: create schema pg2kafka: %w", err)
	}
	// A replica that finds another migrating retries every second, for up to
	// five minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := newProvider(db, locker)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	if err := fn(provider); err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	return nil
}

func newProvider(db *sql.DB, locker lock.SessionLocker) (*goose.Provider, error) {
	return goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
}
