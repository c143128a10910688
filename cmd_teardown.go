package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runTeardown is pg2kafka teardown TABLE: pg2kafka.teardown() from the
// shell.
func runTeardown(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("teardown", "pg2kafka teardown TABLE [flags]",
		`pg2kafka teardown stops tracking TABLE, by calling pg2kafka.teardown(TABLE):
its trigger, its registry row and its backfill go; the table is untouched.
Its queued events still ship, unless -purge.`)
	cl.docs = "docs/tables.md"
	purge := cl.Bool("purge", false, "drop the table's queued events too")
	cl.checkArgs = func(args []string) error {
		if len(args) != 1 {
			return cl.usageError("teardown takes one table, e.g. pg2kafka teardown orders; got %d arguments", len(args))
		}
		return nil
	}
	cfg, err := cl.uses(everyCommand).parse(args, env.getenv, env.stdout)
	if err != nil {
		return err
	}
	pool, _, err := connect(ctx, cfg, env.stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	defer pool.Close()
	tracked, purged, err := outbox.Teardown(ctx, pool, cl.Arg(0), *purge)
	switch {
	case err != nil:
		return err
	case !tracked:
		// Postgres' notice said so.
	case *purge:
		fmt.Fprintf(env.stdout, "%s is no longer tracked; %d queued events dropped\n", cl.Arg(0), purged)
	default:
		fmt.Fprintf(env.stdout, "%s is no longer tracked; its queued events still ship\n", cl.Arg(0))
	}
	return nil
}
