package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runSetup is pg2kafka setup TABLE KEY_COLUMN: pg2kafka.setup() from the
// shell.
func runSetup(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("setup", "pg2kafka setup TABLE KEY_COLUMN [flags]",
		`pg2kafka setup tracks TABLE: it installs the change trigger and, the first
time, queues a SNAPSHOT event per existing row, in one transaction, by calling
pg2kafka.setup(TABLE, KEY_COLUMN, …). KEY_COLUMN's value is each event's key.
TABLE is named as in SQL: orders, shop.orders, '"Sales"."Order Items"'.
Called again for a tracked table, it sets the options given, and every option
left out goes back to its default.`)
	cl.docs = "docs/tables.md"
	var opts outbox.SetupOptions
	cl.Func("operations", "the statements captured, a comma-separated `list` of INSERT, UPDATE, DELETE (default all three)", func(v string) error {
		opts.Operations = splitList(v)
		return nil
	})
	cl.Func("columns", "the columns kept in data (and old), a comma-separated `list` (default all)", func(v string) error {
		opts.Columns = splitList(v)
		return nil
	})
	cl.BoolVar(&opts.IncludeOld, "include-old", false, "events of UPDATE and DELETE carry the values before the change in \"old\"")
	cl.BoolVar(&opts.FullRow, "full-row", false, "events of UPDATE carry the whole new row in data and the whole previous row in \"old\", those of DELETE the whole deleted row in \"old\"; EVENT_FORMAT's formats other than pg2kafka need it")
	cl.StringVar(&opts.Filter, "filter", "", "a boolean SQL `condition` on NEW and OLD; a change for which it is not true emits nothing (default none)")
	cl.StringVar(&opts.Topic, "topic", "", "the table's topic, used as given (default pg2kafka.<db>.<table>)")
	cl.BoolFunc("snapshot", "queue a SNAPSHOT event per existing row (default true the first time, false after); -snapshot=false on a big table, then pg2kafka backfill", func(v string) error {
		b, err := parseBool(v)
		opts.Snapshot = &b
		return err
	})
	cl.checkArgs = func(args []string) error {
		if len(args) != 2 {
			return cl.usageError("setup takes a table and its key column, e.g. pg2kafka setup orders id; got %d arguments", len(args))
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
	res, err := outbox.Setup(ctx, pool, cl.Arg(0), cl.Arg(1), opts)
	if err != nil {
		return err
	}
	t := res.Table
	fmt.Fprintf(env.stdout, "%s.%s is tracked, keyed by %s; %d SNAPSHOT events queued\n", t.Schema, t.Name, t.KeyColumn, res.Snapshotted)
	return nil
}

// splitList splits a comma-separated flag value, trimming spaces; "" is the
// empty list.
func splitList(v string) []string {
	list := []string{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			list = append(list, item)
		}
	}
	return list
}
