package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
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
		return fmt.Errorf("outbox: migrate: this role may not install pg2kafka: run pg2kafka migrate as the owner of the database, and a shipper of least privilege (pg2kafka_shipper) without PERFORM_MIGRATIONS: %w", err)
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

// CheckSchema returns an error, saying what to run, unless the pg2kafka
// schema is installed at exactly the version of this binary's migrations: an
// older schema lacks what the shipper relies on, and a newer one may queue
// events this shipper would ship wrongly.
func CheckSchema(ctx context.Context, pool *pgxpool.Pool) error {
	want, err := latestVersion()
	if err != nil {
		return err
	}
	const install = "run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true) as the owner of the database"
	var installed bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, VersionTable).Scan(&installed); err != nil {
		return fmt.Errorf("outbox: check the pg2kafka schema: %w", err)
	}
	if !installed {
		return fmt.Errorf("outbox: pg2kafka is not installed in this database: %s", install)
	}
	var have int64
	err = pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+VersionTable).Scan(&have)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
		return fmt.Errorf("outbox: check the pg2kafka schema: this role may not read %s, which a schema older than this pg2kafka does not grant to pg2kafka_shipper: %s: %w", VersionTable, install, err)
	}
	if err != nil {
		return fmt.Errorf("outbox: check the pg2kafka schema: %w", err)
	}
	switch {
	case have < want:
		return fmt.Errorf("outbox: the pg2kafka schema is at version %d and this pg2kafka needs version %d: %s", have, want, install)
	case have > want:
		return fmt.Errorf("outbox: the pg2kafka schema is at version %d, newer than this pg2kafka knows (%d): run the pg2kafka release that installed it, or a newer one", have, want)
	}
	return nil
}

// SchemaVersion returns the version of the pg2kafka schema installed in the
// database, 0 when there is none.
func SchemaVersion(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var installed bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, VersionTable).Scan(&installed); err != nil {
		return 0, fmt.Errorf("outbox: read the schema version: %w", err)
	}
	if !installed {
		return 0, nil
	}
	var have int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+VersionTable).Scan(&have); err != nil {
		return 0, fmt.Errorf("outbox: read the schema version: %w", err)
	}
	return have, nil
}

// LatestVersion is the schema version this pg2kafka's migrations reach,
// which it needs to ship.
func LatestVersion() int64 {
	v, err := latestVersion()
	if err != nil {
		panic(err) // the migrations are embedded: only a broken build lacks them
	}
	return v
}

// latestVersion is the version of the newest embedded migration.
func latestVersion() (int64, error) {
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(names) == 0 {
		return 0, fmt.Errorf("outbox: no embedded migrations: %v", err)
	}
	return goose.NumericComponent(names[len(names)-1])
}
