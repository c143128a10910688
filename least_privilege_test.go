package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
)

// TestLeastPrivilegedShipper runs pg2kafka as a login role holding nothing
// but pg2kafka_shipper, shipping the changes of a role that may write to a
// tracked table and do nothing else: every event ships, in order, and the
// queue drains.
func TestLeastPrivilegedShipper(t *testing.T) {
	t.Parallel()
	// Created first, so that they are dropped after the database that
	// grants them privileges.
	shipperRole, writer := pgtest.NewRole(t), pgtest.NewRole(t)
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`GRANT INSERT, UPDATE, DELETE ON products TO `+writer.Name,
		`GRANT pg2kafka_shipper TO `+shipperRole.Name,
	)
	conn, err := pgx.Connect(t.Context(), writer.ConnString(t, url))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug')`,
		`UPDATE products SET name = 'Big Red Mug'`,
		`DELETE FROM products`,
	} {
		if _, err := conn.Exec(t.Context(), sql); err != nil {
			t.Fatalf("%s as the writer: %v", sql, err)
		}
	}
	var want strings.Builder
	rows, _ := pool.Query(t.Context(), `
		SELECT current_database(), coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text AS uuid, statement, data::text, created_at
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	var database, uuid, statement, data string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&database, &uuid, &statement, &data, &at}, func() error {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(data)); err != nil {
			return err
		}
		want.WriteString(`{"topic":"pg2kafka.` + database + `.products","key":"CM01-R","value":{"uuid":"` + uuid +
			`","external_id":"CM01-R","statement":"` + statement + `","data":` + compact.String() +
			`,"created_at":"` + at.UTC().Format(time.RFC3339Nano) + `"},"headers":{"pg2kafka-event-id":"` + uuid +
			`","pg2kafka-statement":"` + statement + `","pg2kafka-table":"public.products"}}` + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	env := map[string]string{"DATABASE_URL": shipperRole.ConnString(t, url), "DRY_RUN": "true", "POLL_INTERVAL": "10ms"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, configEnv(env), stdout, stderr) }()
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr)
	}
	if got := stdout.String(); got != want.String() {
		t.Errorf("stdout:\n%s\nwant:\n%s", got, want.String())
	}
	if strings.Contains(stderr.String(), "level=ERROR") || strings.Contains(stderr.String(), "level=WARN") {
		t.Errorf("stderr:\n%s", stderr)
	}

	// Installing or upgrading pg2kafka is the owner's job.
	env["PERFORM_MIGRATIONS"] = "true"
	var out, errOut bytes.Buffer
	err = run(t.Context(), nil, configEnv(env), &out, &errOut)
	if code := exitCode(err, &errOut); code != 1 {
		t.Errorf("exit code with PERFORM_MIGRATIONS=true = %d, want 1", code)
	}
	const wantErr = "pg2kafka: outbox: migrate: this role may not install pg2kafka: run pg2kafka migrate as the owner of the database, " +
		"and a shipper of least privilege (pg2kafka_shipper) without PERFORM_MIGRATIONS: ERROR: permission denied for database "
	if got := errOut.String(); !strings.HasPrefix(got, wantErr) {
		t.Errorf("stderr = %q, want it to start %q", got, wantErr)
	}
}
