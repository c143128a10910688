package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
)

// TestCommandsEndToEnd drives pg2kafka from the shell only, as its first
// hour would: migrate, setup, ship to a broker, status, backfill, teardown,
// uninstall.
func TestCommandsEndToEnd(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug'), ('CM02-B', 'Blue Mug')`,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`INSERT INTO orders SELECT generate_series(1, 50)`,
	)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	env := map[string]string{
		"DATABASE_URL":        url,
		"KAFKA_PRODUCER_URL":  strings.Join(cluster.ListenAddrs(), ","),
		"KAFKA_CREATE_TOPICS": "true",
		"HTTP_ADDR":           "off",
		"POLL_INTERVAL":       "10ms",
		"LOG_LEVEL":           "warn",
	}
	var database string
	if err := pool.QueryRow(t.Context(), `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}

	if got := runCommand(t, env, "migrate", "-log-level=warn"); got.code != 0 || !strings.HasPrefix(got.stdout, "pg2kafka schema at version ") {
		t.Fatalf("migrate: exit status %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
	}
	runCommand(t, env, "setup", "products", "sku").require(t, 0, "public.products is tracked, keyed by sku; 2 SNAPSHOT events queued\n", "")
	runCommand(t, env, "setup", "orders", "id", "-snapshot=false").require(t, 0, "public.orders is tracked, keyed by id; 0 SNAPSHOT events queued\n", "")

	ctx, stop := context.WithCancel(t.Context())
	shipped := make(chan result, 1)
	go func() {
		var stdout, stderr syncBuffer
		err := run(ctx, []string{"ship"}, func(k string) string { return env[k] }, &stdout, &stderr)
		var report strings.Builder
		shipped <- result{exitCode(err, &report), stdout.String(), stderr.String() + report.String()}
	}()
	shipping := true
	stopShipping := func() {
		stop()
		if got := <-shipped; got.code != 0 || got.stdout != "" {
			t.Errorf("ship: exit status %d, stdout %q, stderr:\n%s", got.code, got.stdout, got.stderr)
		}
		shipping = false
	}
	defer func() {
		if shipping {
			stopShipping()
		}
	}()

	if got := runCommand(t, env, "backfill", "orders", "-chunk-size", "20"); got.code != 0 || !strings.HasPrefix(got.stdout, "backfill of orders finished: 50 rows, 50 SNAPSHOT events queued") {
		t.Errorf("backfill: exit status %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
	}
	mustExec(t, pool, `UPDATE products SET name = 'Big Red Mug' WHERE sku = 'CM01-R'`)
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })
	products := readAll(t, cluster.ListenAddrs(), "pg2kafka."+database+".products")
	if want := []string{"CM01-R", "CM01-R", "CM02-B"}; !slices.Equal(products, want) {
		t.Errorf("keys on the products topic: %q, want %q", products, want)
	}
	if orders := readAll(t, cluster.ListenAddrs(), "pg2kafka."+database+".orders"); len(orders) != 50 {
		t.Errorf("%d records on the orders topic, want the 50 of the backfill", len(orders))
	}

	status := runCommand(t, env, "status")
	if status.code != 0 || !strings.Contains(status.stdout, "\nshippers:     2 connections, owning 64 of 64 lanes\n") ||
		!strings.Contains(steady(status.stdout), "public.orders  id  0  -  0  done, 50 rows  -") || !strings.HasSuffix(status.stdout, "\nhealthy\n") {
		t.Errorf("status: exit status %d, stdout:\n%s\nstderr:\n%s", status.code, status.stdout, status.stderr)
	}

	runCommand(t, env, "teardown", "orders").require(t, 0, "orders is no longer tracked; its queued events still ship\n", "")
	stopShipping()
	runCommand(t, env, "uninstall").require(t, 0, "", "")
	runCommand(t, map[string]string{"DATABASE_URL": url}, "uninstall").
		require(t, 0, "", "level=INFO msg=\"nothing to uninstall: pg2kafka is not installed in this database\"\n")
}
