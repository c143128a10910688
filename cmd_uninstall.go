package main

import (
	"context"
	"log/slog"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runUninstall is pg2kafka uninstall: it removes pg2kafka from the
// database, leaving the tracked tables as they are (see outbox.Uninstall).
func runUninstall(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("uninstall", "pg2kafka uninstall [flags]",
		`pg2kafka uninstall removes pg2kafka from the database: the pg2kafka schema,
queued and dead-lettered events included, and the trigger of every tracked
table. The tables and their rows stay as they are. Stop the shippers first.`)
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
	return outbox.Uninstall(ctx, pool, logger)
}
