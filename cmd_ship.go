package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/pg2kafka/pg2kafka/internal/httpserver"
	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
	"github.com/pg2kafka/pg2kafka/shipper/rabbitmq"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

// shipCommandLine is ship's command line: every setting.
func shipCommandLine() *commandLine {
	cl := newCommandLine("ship", "pg2kafka [command] [flags]", `pg2kafka ships Postgres row changes to Kafka through a transactional outbox.`)
	cl.synopsis += "\n\nCommands (pg2kafka COMMAND -help tells more):\n" + commandList() + "\nWithout a command pg2kafka ships: pg2kafka [ship] [flags]."
	cl.docs = "docs/configuration.md"
	return cl.uses(shipOnly, everyCommand)
}

// runShip is pg2kafka ship, from configuration to shutdown; it returns once
// ctx ends and the batch in flight is settled.
func runShip(ctx context.Context, args []string, env environment) error {
	stdout, stderr := env.stdout, env.stderr
	cfg, err := parseConfig(args, env.getenv, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr, cfg.LogLevel)
	// Checked before anything else, so that an unreadable certificate stops
	// pg2kafka at once rather than after Postgres has been waited for.
	if cfg.Destination == destKafka {
		if err := cfg.Kafka.Check(); err != nil {
			return &configError{err.Error()}
		}
		if cfg.Kafka.SASLMechanism == "PLAIN" && !cfg.Kafka.TLSEnabled() {
			logger.Warn("KAFKA_SASL_MECHANISM=PLAIN without TLS sends the password to the brokers unencrypted; set KAFKA_TLS=true unless the network is trusted")
		}
	}

	// Listening first, so that an address that cannot be had stops pg2kafka
	// before it waits for anything, and so that probes are answered while it
	// waits for Postgres.
	var hub *stream.Hub
	if cfg.StreamToken != "" {
		hub = stream.NewHub(0)
	}
	stats := httpserver.NewStats(hub)
	if !cfg.httpAddrGiven && testHTTPAddr != "" {
		cfg.HTTPAddr = testHTTPAddr
	}
	srv, httpAddr, err := startHTTP(ctx, cfg, stats, hub, logger)
	if err != nil {
		return err
	}
	if srv != nil {
		defer srv.Close()
	}

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
	if err := outbox.CheckSchema(ctx, pool); err != nil {
		return err
	}
	database, err := outbox.CurrentDatabase(ctx, pool)
	if err != nil {
		return err
	}

	if srv != nil {
		srv.SetDatabase(database)
	}
	sink, attrs, err := newSink(ctx, cfg, env, stats, logger)
	if err != nil {
		return err
	}
	defer sink.Close()

	attrs = append([]any{slog.String("database", database), slog.String("destination", cfg.Destination)}, attrs...)
	attrs = append(attrs, slog.Int("batch_size", cfg.BatchSize), slog.Int("workers", cfg.Workers),
		slog.String("http_addr", httpAddr), slog.Bool("stream", hub != nil))
	logger.Info("pg2kafka shipping", attrs...)
	queue := outbox.NewQueue(pool)
	queue.SetDestination(destinationKinds[cfg.Destination])
	s := shipper.New(shipper.Config{
		Database:            database,
		TopicNamespace:      cfg.TopicNamespace,
		BatchSize:           cfg.BatchSize,
		Workers:             cfg.Workers,
		PollInterval:        cfg.PollInterval,
		SendTimeout:         cfg.SendTimeout,
		ShutdownTimeout:     cfg.ShutdownTimeout,
		LaneTakeoverTimeout: cfg.LaneTakeoverTimeout,
		Format:              cfg.EventFormat,
		DebeziumTombstones:  cfg.DebeziumTombstones,
		Version:             strings.TrimPrefix(buildVersion(), "v"),
		Logger:              logger,
		OnSettled:           stats.Settled,
	}, queue, sink)
	if srv != nil {
		parts := httpserver.Parts{Pool: pool, Shipper: s}
		if r, ok := sink.(interface{ Reachable(context.Context) error }); ok {
			parts.Destination = r.Reachable
		}
		srv.Attach(parts)
	}
	err = s.Run(ctx)
	logger.Info("pg2kafka stopped")
	return err
}

// newSink makes the sink of the destination chosen, and the attributes
// that describe it in the log, none of them a secret.
func newSink(ctx context.Context, cfg Config, env environment, stats *httpserver.Stats, logger *slog.Logger) (shipper.Sink, []any, error) {
	switch cfg.Destination {
	case destDryRun:
		return shipper.NewWriterSink(env.stdout), nil, nil
	case destStream:
		return stream.Sink{}, nil, nil
	case destWebhook:
		sink, err := webhook.New(cfg.Webhook)
		if err != nil {
			return nil, nil, &configError{err.Error()}
		}
		w := cfg.Webhook
		sink.WatchStartup(ctx, logger)
		return sink, []any{slog.String("webhook_url", webhook.RedactURL(w.URL)), slog.Int("webhook_batch_size", max(w.BatchSize, 1)),
			slog.Int("webhook_concurrency", w.Concurrency), slog.Bool("webhook_signed", w.Secret != "")}, nil
	case destRabbitMQ:
		sink, err := rabbitmq.New(cfg.RabbitMQ)
		if err != nil {
			return nil, nil, &configError{err.Error()}
		}
		r := cfg.RabbitMQ
		// Said at once, so that a wrong address or a missing exchange does
		// not wait for the first event to show.
		connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := sink.Connect(connectCtx); err != nil {
			logger.Warn("cannot publish to RabbitMQ yet; events stay queued, retrying", slog.String("rabbitmq_url", rabbitmq.Redact(r.URL)), slog.String("exchange", r.Exchange), slog.Any("error", err))
		} else {
			logger.Info("connected to RabbitMQ", slog.String("rabbitmq_url", rabbitmq.Redact(r.URL)), slog.String("exchange", r.Exchange))
		}
		return sink, []any{slog.String("rabbitmq_url", rabbitmq.Redact(r.URL)), slog.String("exchange", r.Exchange)}, nil
	}
	k := cfg.Kafka
	k.Logger = logger
	sink, err := kafka.New(k,
		// franz-go narrates routine events at info level; keep its warnings.
		kgo.WithLogger(kslog.New(newLogger(cfg, env.stderr, max(cfg.LogLevel, slog.LevelWarn)).With(slog.String("component", "kafka")))),
		kgo.WithHooks(stats.KafkaHooks()),
	)
	if err != nil {
		return nil, nil, &configError{err.Error()}
	}
	attrs := []any{slog.Any("brokers", k.Brokers), slog.Bool("kafka_tls", k.TLSEnabled())}
	if k.SASLMechanism != "" {
		attrs = append(attrs, slog.String("kafka_sasl_mechanism", k.SASLMechanism), slog.String("kafka_sasl_username", k.SASLUsername))
	}
	return sink, attrs, nil
}

// startHTTP listens on HTTP_ADDR and serves there until the returned
// server is closed, and returns the address it listens on ("off" without
// it). It returns no server when HTTP_ADDR=off, or when the default
// address is taken (another pg2kafka on the host, most likely), which is
// worth a warning only. An address given that cannot be had is a
// configuration error.
func startHTTP(ctx context.Context, cfg Config, stats *httpserver.Stats, hub *stream.Hub, logger *slog.Logger) (*httpserver.Server, string, error) {
	if cfg.HTTPAddr == "off" {
		return nil, "off", nil
	}
	ln, err := httpserver.Listen(cfg.HTTPAddr)
	if err != nil {
		if cfg.httpAddrGiven || cfg.Destination == destStream {
			return nil, "", &configError{fmt.Sprintf("HTTP_ADDR=%q: cannot listen there: %v; choose a free address, or HTTP_ADDR=off", cfg.HTTPAddr, unwrapOpError(err))}
		}
		logger.Warn("running without the HTTP listener (metrics, health probes, status page): its default address is taken, by another pg2kafka on this host perhaps; set HTTP_ADDR to a free address",
			slog.String("http_addr", cfg.HTTPAddr), slog.Any("error", unwrapOpError(err)))
		return nil, "off", nil
	}
	srv := httpserver.New(httpserver.Config{Stats: stats, Hub: hub, StreamToken: cfg.StreamToken, Logger: logger.With(slog.String("component", "http"))})
	go func() {
		if err := srv.Serve(ctx, ln); err != nil {
			logger.Error("the HTTP listener stopped", slog.Any("error", err))
		}
	}()
	return srv, ln.Addr().String(), nil
}

// testHTTPAddr, when tests set it, replaces HTTP_ADDR's default, so that
// the pg2kafkas they run never contend for a fixed port.
var testHTTPAddr string

// unwrapOpError drops the "listen tcp :8080:" prefix the error repeats.
func unwrapOpError(err error) error {
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Err != nil {
		return op.Err
	}
	return err
}
