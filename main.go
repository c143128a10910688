// Command pg2kafka ships Postgres row changes to Kafka through a
// transactional outbox: triggers queue every change in the
// pg2kafka.outbound_event_queue table, and pg2kafka produces the queued events
// to Kafka, deleting each once Kafka has acknowledged it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode reports err and turns it into the process's exit status: 2 for
// configuration mistakes, 1 for anything else that stopped pg2kafka.
func exitCode(err error, stderr io.Writer) int {
	var cfgErr *configError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &cfgErr):
		fmt.Fprintln(stderr, "pg2kafka: "+err.Error())
		return 2
	default:
		fmt.Fprintln(stderr, "pg2kafka: "+err.Error())
		return 1
	}
}

// run is pg2kafka from configuration to shutdown; it returns once ctx ends
// and the batch in flight is settled.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr, cfg.LogLevel)

	pool, err := outbox.Connect(ctx, cfg.DatabaseURL, cfg.SendTimeout+cfg.ShutdownTimeout+30*time.Second, logger)
	if err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop while waiting for Postgres
		}
		return err
	}
	defer pool.Close()

	if cfg.PerformMigrations {
		if err := outbox.Migrate(ctx, pool, logger); err != nil {
			return err
		}
	}
	database, err := outbox.CurrentDatabase(ctx, pool)
	if err != nil {
		return err
	}

	var sink shipper.Sink
	if cfg.DryRun {
		sink = shipper.NewWriterSink(stdout)
	} else {
		kafka, err := shipper.NewKafkaSink(shipper.KafkaConfig{
			CreateTopics:           cfg.KafkaCreateTopics,
			TopicPartitions:        cfg.KafkaTopicPartitions,
			TopicReplicationFactor: cfg.KafkaTopicReplicationFactor,
		},
			kgo.SeedBrokers(cfg.KafkaBrokers...),
			kgo.ProducerBatchCompression(compressionCodecs[cfg.KafkaCompression]),
			kgo.ProducerLinger(cfg.KafkaLinger),
			// franz-go narrates routine events at info level; keep its warnings.
			kgo.WithLogger(kslog.New(newLogger(cfg, stderr, max(cfg.LogLevel, slog.LevelWarn)).With(slog.String("component", "kafka")))),
		)
		if err != nil {
			return err
		}
		sink = kafka
	}
	defer sink.Close()

	logger.Info("pg2kafka shipping",
		slog.String("database", database),
		slog.Bool("dry_run", cfg.DryRun),
		slog.Any("brokers", cfg.KafkaBrokers),
		slog.Int("batch_size", cfg.BatchSize),
		slog.Int("workers", cfg.Workers))
	s := shipper.New(shipper.Config{
		Database:        database,
		TopicNamespace:  cfg.TopicNamespace,
		BatchSize:       cfg.BatchSize,
		Workers:         cfg.Workers,
		PollInterval:    cfg.PollInterval,
		SendTimeout:     cfg.SendTimeout,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          logger,
	}, outbox.NewQueue(pool), sink)
	err = s.Run(ctx)
	logger.Info("pg2kafka stopped")
	return err
}

// compressionCodecs maps KAFKA_COMPRESSION's values to franz-go's codecs.
var compressionCodecs = map[string]kgo.CompressionCodec{
	"none":   kgo.NoCompression(),
	"gzip":   kgo.GzipCompression(),
	"snappy": kgo.SnappyCompression(),
	"lz4":    kgo.Lz4Compression(),
	"zstd":   kgo.ZstdCompression(),
}

func newLogger(cfg Config, w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
