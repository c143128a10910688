// Command bench is pg2kafka's benchmark suite. On the local Postgres, in a
// database of its own, and against a dev broker it starts in a separate
// process, it measures:
//
//  1. raw:     how fast Postgres alone hands out and deletes queued events,
//     with 1, 2 and 4 workers;
//  2. drain:   how fast the pg2kafka binary drains a full queue onto Kafka,
//     counted by the topic's end offsets, and its peak RSS meanwhile;
//  3. latency: pg2kafka's idle CPU with an empty queue, then commit→consumer
//     latency, with its breakdown, while rows are written at each of
//     -latency-rates in turn, and whether the queue stays short;
//  4. write:   what the trigger costs a writer, against no trigger and a
//     minimal outbox trigger;
//  5. scaling: the drain rate across batch sizes and event sizes;
//  6. webhook: events/s to a local endpoint at batch 1 and 100 beside a bare
//     Go client posting the same bodies, and commit→receipt latency at
//     1,000/s;
//  7. rabbitmq: events/s with publisher confirms beside a bare amqp091-go
//     publisher with confirms;
//  8. pinned:  idle cost, empty claims, latency and drain rate with and
//     without a snapshot held open beside pg2kafka (pg_dump, a report);
//  9. paused:  the claim path's drain rate of a flowing table with a paused
//     table's backlog queued ahead of it, and with none;
//  10. isolation: the whole of pg2kafka beside a table whose topic is missing
//     with 100k and 1M events queued, and with none, in interleaved rounds:
//     the flowing table's commit→consumer p99 and burst drain rate, medians;
//  11. emit: pg2kafka.emit() per call, against a plain INSERT into an
//     outbox table and against the floor of any emit(), a function that
//     only writes the queue row.
//
// It prints a markdown table with the targets to stdout, writes the
// details as JSON to -report, and logs progress to stderr:
//
//	go run ./script/bench -quick            # about a minute, for checking
//	go run ./script/bench                   # the full suite, several minutes
//	go run ./script/bench -only drain,latency
//	go run ./script/bench -shipper-env POLL_INTERVAL=5ms -only latency
//	go run ./script/bench -only latency -latency-rates 1000,5000 -latency-variant "poll5ms POLL_INTERVAL=5ms"
//	go run ./script/bench -only drain -cpuprofile cpu.pprof
//	go run ./script/bench -quick -only webhook,rabbitmq
//
// Every pg2kafka run gets only the settings the suite gives it (and those of
// -shipper-env), never those of the calling shell.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
	"github.com/twmb/franz-go/pkg/kadm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench is the suite's environment and what it has measured so far.
type bench struct {
	cfg    *config
	log    *slog.Logger
	stderr io.Writer
	bin    binaries
	broker string
	dbURL  string
	pool   *pgxpool.Pool
	kafka  *kadm.Client
	// drains holds the drains measured, so that a run one section needs
	// and another already made is not made twice.
	drains map[drainParams]drainResult
	report *report
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	b := &bench{cfg: cfg, log: logger, stderr: stderr, drains: make(map[drainParams]drainResult), report: newReport(cfg)}

	dir, err := os.MkdirTemp("", "pg2kafka-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logger.Info("building pg2kafka and devkafka", "dir", dir)
	if b.bin, err = buildBinaries(ctx, dir, stderr); err != nil {
		return err
	}

	broker, addr, err := startBroker(ctx, b.bin, cfg.Partitions, stderr)
	if err != nil {
		return err
	}
	defer func() { _, _ = broker.Stop(stopTimeout) }()
	b.broker = addr
	if b.kafka, err = newKafkaAdmin(addr); err != nil {
		return err
	}
	defer b.kafka.Close()

	dbURL, dropDatabase, err := devenv.CreateDatabase(ctx, cfg.AdminURL, "pg2kafka-bench", cfg.Database)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dropDatabase()) }()
	b.dbURL = dbURL
	// Room for the most clients a section holds at once, and a few more
	// for the fill, the queue's sampler and the waits.
	poolSize := max(cfg.Latency.Writers, cfg.Write.Clients, 4) + 4
	if b.pool, err = connect(ctx, dbURL, poolSize, logger); err != nil {
		return err
	}
	defer b.pool.Close()
	if b.report.Machine.Postgres, err = serverVersion(ctx, b.pool); err != nil {
		return err
	}

	// Whatever was measured is reported, also when a section fails; but
	// an interrupted run does not overwrite the last report.
	runErr := b.runSections(ctx)
	if ctx.Err() != nil {
		return runErr
	}
	b.report.finish(runErr)
	b.report.writeMarkdown(stdout)
	if err := b.report.writeJSON(cfg.ReportPath); err != nil {
		return errors.Join(runErr, err)
	}
	logger.Info("report written", "file", cfg.ReportPath)
	return runErr
}

func (b *bench) runSections(ctx context.Context) error {
	sections := map[string]func(context.Context) error{
		sectionRaw:       b.runRaw,
		sectionDrain:     b.runDrain,
		sectionLatency:   b.runLatency,
		sectionWrite:     b.runWritePath,
		sectionScaling:   b.runScaling,
		sectionWebhook:   b.runWebhook,
		sectionRabbitMQ:  b.runRabbitMQ,
		sectionFormats:   b.runFormats,
		sectionPinned:    b.runPinned,
		sectionPaused:    b.runPaused,
		sectionIsolation: b.runIsolation,
		sectionEmit:      b.runEmit,
	}
	for _, name := range b.cfg.Sections {
		b.log.Info("section", "name", name)
		if err := sections[name](ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
