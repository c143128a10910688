package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
)

func TestUninstallCommand(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug')`,
		`SELECT pg2kafka.setup('products', 'sku', columns => '{sku}')`,
	)
	// Kafka's settings are not needed.
	env := map[string]string{"DATABASE_URL": url}
	var stdout, stderr bytes.Buffer

	if err := run(context.Background(), []string{"uninstall", "-log-level", "warn"}, func(k string) string { return env[k] }, &stdout, &stderr); err != nil {
		t.Fatalf("pg2kafka uninstall: %v\nstderr:\n%s", err, &stderr)
	}

	var schemas, triggers, rows int
	if err := pool.QueryRow(context.Background(), `
		SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'pg2kafka'),
		       (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass),
		       (SELECT count(*) FROM products WHERE name = 'Red Mug')`).Scan(&schemas, &triggers, &rows); err != nil {
		t.Fatal(err)
	}
	if schemas != 0 || triggers != 0 || rows != 1 {
		t.Errorf("after uninstall: %d pg2kafka schemas, %d triggers on products, %d of its 1 row; want 0, 0, 1", schemas, triggers, rows)
	}
	if !strings.Contains(stderr.String(), `level=WARN msg="discarding events that were never shipped" events=1`) {
		t.Errorf("stderr does not report the discarded snapshot:\n%s", &stderr)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", &stdout)
	}
}

func TestUninstallCommandWithoutPg2kafka(t *testing.T) {
	t.Parallel()
	_, url := pgtest.NewPool(t)
	got := runCommand(t, map[string]string{"DATABASE_URL": url}, "uninstall")
	got.require(t, 0, "", "level=INFO msg=\"nothing to uninstall: pg2kafka is not installed in this database\"\n")
}
