package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

const sectionEmit = "emit"

// The emit section: what pg2kafka.emit() costs an application, one event per
// transaction, beside the INSERT it replaces, into an outbox table of the
// same shape (topic, key, payload, headers, time) with no function around
// it, and beside the floor that any emit() stands on. Its variants share
// the write section's clients, duration and rounds.

// emitOutboxSQL creates the outbox table emit() is measured against, and
// the floor of any emit(): a function running as its owner, as emit() must
// (its callers may not write the queue), that only writes the queue row,
// with no check, no limit and no look at the tracked topics.
const emitOutboxSQL = `
CREATE TABLE bench_emit_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text        NOT NULL,
    key        text,
    payload    jsonb       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION bench_emit_floor(topic text, key text, payload jsonb, headers jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
    VALUES (key, '', topic, 'EVENT', payload, topic, headers);
END
$$`

type emitVariant struct {
	key, label, sql string
}

var emitVariants = []emitVariant{
	{"insert", "INSERT into an outbox table", `INSERT INTO bench_emit_outbox (topic, key, payload, headers) VALUES ($1, $2, $3::jsonb, $4::jsonb)`},
	{"jsonb", "pg2kafka.emit(), jsonb payload", `SELECT pg2kafka.emit($1, $2, $3::jsonb, $4::jsonb)`},
	{"text", "pg2kafka.emit(), text payload (kept byte for byte)", `SELECT pg2kafka.emit($1, $2, $3::text, $4::jsonb)`},
	{"floor", "floor: a SECURITY DEFINER function that only INSERTs the queue row", `SELECT bench_emit_floor($1, $2, $3::jsonb, $4::jsonb)`},
}

// emitChecked holds the variants held to the target; the floor is there to
// show how near to it any emit() can come.
var emitChecked = map[string]bool{"jsonb": true, "text": true}

// emitResult is the section's measurements: transactions per second of each
// variant, the median of the rounds, and each emit() variant's ratio to the
// INSERT's.
type emitResult struct {
	Clients    int                  `json:"clients"`
	Seconds    float64              `json:"seconds_per_run"`
	Runs       map[string][]float64 `json:"runs_tps"`
	TPS        map[string]float64   `json:"median_tps"`
	VsInsert   map[string]float64   `json:"vs_insert"`
	PayloadLen int                  `json:"payload_bytes"`
}

const targetEmitVsInsert = 0.9

// runEmit runs the variants interleaved, as the write section does.
func (b *bench) runEmit(ctx context.Context) error {
	cfg := b.cfg.Write
	if _, err := b.pool.Exec(ctx, `DROP TABLE IF EXISTS bench_emit_outbox; DROP FUNCTION IF EXISTS bench_emit_floor; `+emitOutboxSQL); err != nil {
		return fmt.Errorf("create the outbox table and the floor function: %w", err)
	}
	payload := fmt.Sprintf(`{"type":"OrderPaid","order":42,"customer":"customer-0001","note":%q}`, randomText(payloadLen(200)))
	r := emitResult{
		Clients: cfg.Clients, Seconds: time.Duration(cfg.Duration).Seconds(), PayloadLen: len(payload),
		Runs: make(map[string][]float64), TPS: make(map[string]float64), VsInsert: make(map[string]float64),
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, v := range emitVariants {
			tps, err := b.emitLoad(ctx, v, payload)
			if err != nil {
				return fmt.Errorf("emit (%s): %w", v.label, err)
			}
			r.Runs[v.key] = append(r.Runs[v.key], tps)
			b.log.Info("emit", "round", round, "variant", v.key, "tps", int(tps))
		}
	}
	for key, runs := range r.Runs {
		r.TPS[key] = median(runs)
	}
	for _, v := range emitVariants[1:] {
		r.VsInsert[v.key] = r.TPS[v.key] / r.TPS["insert"]
	}
	b.report.Emit = &r
	return nil
}

// emitLoad empties the outbox table and the queue, then runs the variant's
// statement, one event per transaction, from -write-clients connections for
// -write-duration, and returns the commits per second.
func (b *bench) emitLoad(ctx context.Context, v emitVariant, payload string) (float64, error) {
	cfg := b.cfg.Write
	if err := truncate(ctx, b.pool, "bench_emit_outbox", "pg2kafka.outbound_event_queue"); err != nil {
		return 0, err
	}
	if err := settle(ctx, b.pool); err != nil {
		return 0, err
	}
	conns, release, err := acquire(ctx, b.pool, cfg.Clients)
	if err != nil {
		return 0, err
	}
	defer release()
	name := "emit_" + v.key
	for _, c := range conns {
		if _, err := c.Conn().Prepare(ctx, name, v.sql); err != nil {
			return 0, fmt.Errorf("prepare: %w", err)
		}
	}
	const headers = `{"event-type":"OrderPaid"}`
	var commits atomic.Int64
	start := time.Now()
	deadline := start.Add(time.Duration(cfg.Duration))
	g, gctx := errgroup.WithContext(ctx)
	for i, c := range conns {
		key := fmt.Sprintf("order-%04d", i)
		g.Go(func() error {
			for time.Now().Before(deadline) {
				if _, err := c.Exec(gctx, name, "shop.order-events", key, payload, headers); err != nil {
					return err
				}
				commits.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(commits.Load()) / time.Since(start).Seconds(), nil
}

func (e *emitResult) rows() []row {
	rows := make([]row, 0, 2*len(emitVariants))
	for _, v := range emitVariants {
		rows = append(rows, row{
			Measure: fmt.Sprintf("emit TPS: %s, %d clients, %d-byte payload", v.label, e.Clients, e.PayloadLen),
			Value:   perSec(e.TPS[v.key], "tx") + fmt.Sprintf(" (median of %d)", len(e.Runs[v.key])),
		})
	}
	for _, v := range emitVariants[1:] {
		measure, ratio := "emit: "+v.label+" / INSERT", fmt.Sprintf("%.2f", e.VsInsert[v.key])
		if !emitChecked[v.key] {
			rows = append(rows, row{Measure: measure, Value: ratio})
			continue
		}
		rows = append(rows, check(measure, ratio, fmt.Sprintf("≥ %.2f", targetEmitVsInsert), e.VsInsert[v.key] >= targetEmitVsInsert))
	}
	return rows
}
