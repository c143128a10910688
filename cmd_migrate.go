package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runMigrate is pg2kafka migrate: it installs or upgrades the pg2kafka
// schema, prints the version it is at, and exits.
func runMigrate(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("migrate", "pg2kafka migrate [flags]",
		`pg2kafka migrate installs the pg2kafka schema in the database, or upgrades it
to the version this pg2kafka needs, and prints that version. Run it as the
owner of the database; replicas migrating at once take turns.`)
	cl.docs = "docs/operations.md"
	cfg, err := cl.uses(everyCommand).parse(args, env.getenv, env.stdout)
	if err != nil {
		return err
	}
	pool, logger, err := connect(ctx, cfg, env.stderr, slog.LevelDebug)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := outbox.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	have, err := outbox.SchemaVersion(ctx, pool)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "pg2kafka schema at version %d\n", have)
	return nil
}
