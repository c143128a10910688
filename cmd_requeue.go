package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runRequeue is pg2kafka requeue [ID …]: pg2kafka.requeue_dead_letters()
// from the shell.
func runRequeue(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("requeue", "pg2kafka requeue [ID …] [flags]",
		`pg2kafka requeue puts dead letters back at the end of the queue, by calling
pg2kafka.requeue_dead_letters(): those with the given ids, or every one.
A requeued event ships after the later events of its key: look at those
first (docs/operations.md, Poison events).`)
	cl.docs = "docs/operations.md"
	var ids []int64
	cl.checkArgs = func(args []string) error {
		for _, a := range args {
			id, err := strconv.ParseInt(a, 10, 64)
			if err != nil || id < 1 {
				return cl.usageError("%q is not an event id: give the ids of dead letters (SELECT id FROM pg2kafka.dead_letter_events), or none for every one", a)
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
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
	n, err := outbox.RequeueDeadLetters(ctx, pool, ids)
	if err != nil {
		return err
	}
	if len(ids) > 0 && n < int64(len(ids)) {
		return fmt.Errorf("requeued %d dead letters; %d of the ids given are not in pg2kafka.dead_letter_events", n, int64(len(ids))-n)
	}
	fmt.Fprintf(env.stdout, "requeued %d dead letters\n", n)
	return nil
}
