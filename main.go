// Command pg2kafka ships Postgres row changes to Kafka through a
// transactional outbox: triggers queue every change in the
// pg2kafka.outbound_event_queue table, and pg2kafka produces the queued events
// to Kafka, deleting each once Kafka has acknowledged it.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// softMemoryLimit keeps the heap near the batches in flight; without it the
// garbage collector lets the heap grow to twice the live data before it
// collects. GOMEMLIMIT, when set, wins.
const softMemoryLimit = 40 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
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
	if len(args) > 0 && args[0] == "uninstall" {
		return uninstall(ctx, args[1:], getenv, stdout, stderr)
	}
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr, cfg.LogLevel)
	// Loaded before anything else, so that an unreadable certificate stops
	// pg2kafka at once rather than after Postgres has been waited for.
	var kafkaSecurity []kgo.Opt
	if !cfg.DryRun {
		if kafkaSecurity, err = kafkaSecurityOpts(cfg); err != nil {
			return err
		}
		if cfg.KafkaSASLMechanism == "PLAIN" && !cfg.KafkaTLS {
			logger.Warn("KAFKA_SASL_MECHANISM=PLAIN without TLS sends the password to the brokers unencrypted; set KAFKA_TLS=true unless the network is trusted")
		}
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

	var sink shipper.Sink
	if cfg.DryRun {
		sink = shipper.NewWriterSink(stdout)
	} else {
		opts := append([]kgo.Opt{
			kgo.SeedBrokers(cfg.KafkaBrokers...),
			kgo.ProducerBatchCompression(compressionCodecs[cfg.KafkaCompression]),
			kgo.ProducerLinger(cfg.KafkaLinger),
			// franz-go narrates routine events at info level; keep its warnings.
			kgo.WithLogger(kslog.New(newLogger(cfg, stderr, max(cfg.LogLevel, slog.LevelWarn)).With(slog.String("component", "kafka")))),
		}, kafkaSecurity...)
		kafka, err := shipper.NewKafkaSink(shipper.KafkaConfig{
			CreateTopics:           cfg.KafkaCreateTopics,
			TopicPartitions:        cfg.KafkaTopicPartitions,
			TopicReplicationFactor: cfg.KafkaTopicReplicationFactor,
		}, opts...)
		if err != nil {
			return err
		}
		sink = kafka
	}
	defer sink.Close()

	attrs := []any{
		slog.String("database", database),
		slog.Bool("dry_run", cfg.DryRun),
		slog.Any("brokers", cfg.KafkaBrokers),
		slog.Bool("kafka_tls", cfg.KafkaTLS),
	}
	if cfg.KafkaSASLMechanism != "" {
		attrs = append(attrs, slog.String("kafka_sasl_mechanism", cfg.KafkaSASLMechanism), slog.String("kafka_sasl_username", cfg.KafkaSASLUsername))
	}
	attrs = append(attrs, slog.Int("batch_size", cfg.BatchSize), slog.Int("workers", cfg.Workers))
	logger.Info("pg2kafka shipping", attrs...)
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

// kafkaSecurityOpts returns the franz-go options for the TLS and SASL
// settings, reading the certificate files. A file that cannot be used is a
// configuration error naming the setting, the file and the reason.
func kafkaSecurityOpts(cfg Config) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	if cfg.KafkaTLS {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.KafkaTLSServerName}
		if cfg.KafkaTLSCAFile != "" {
			pem, err := readSettingFile("KAFKA_TLS_CA_FILE", cfg.KafkaTLSCAFile)
			if err != nil {
				return nil, err
			}
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, &configError{fmt.Sprintf("KAFKA_TLS_CA_FILE=%q: holds no PEM certificate; want the CA certificates that sign the brokers' certificates, in PEM", cfg.KafkaTLSCAFile)}
			}
		}
		if cfg.KafkaTLSCertFile != "" {
			certPEM, err := readSettingFile("KAFKA_TLS_CERT_FILE", cfg.KafkaTLSCertFile)
			if err != nil {
				return nil, err
			}
			keyPEM, err := readSettingFile("KAFKA_TLS_KEY_FILE", cfg.KafkaTLSKeyFile)
			if err != nil {
				return nil, err
			}
			// crypto/tls's messages name what is wrong, never the key.
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, &configError{fmt.Sprintf("KAFKA_TLS_CERT_FILE=%q, KAFKA_TLS_KEY_FILE=%q: %v; want a PEM certificate and its unencrypted PEM private key", cfg.KafkaTLSCertFile, cfg.KafkaTLSKeyFile, err)}
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	user, pass := cfg.KafkaSASLUsername, cfg.KafkaSASLPassword
	switch cfg.KafkaSASLMechanism {
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	}
	return opts, nil
}

// readSettingFile reads the file a setting names; the error names both, and
// why the file cannot be read.
func readSettingFile(setting, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err
		}
		return nil, &configError{fmt.Sprintf("%s=%q: cannot read the file: %v", setting, path, err)}
	}
	return b, nil
}

// uninstall is pg2kafka uninstall: it removes pg2kafka from the database,
// leaving the tracked tables as they are (see outbox.Uninstall). It takes
// the settings pg2kafka does, of which it needs only DATABASE_URL.
func uninstall(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, func(name string) string {
		if name == "DRY_RUN" {
			return "true" // so that no Kafka setting is asked for
		}
		return getenv(name)
	}, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr, cfg.LogLevel)
	pool, err := outbox.Connect(ctx, cfg.DatabaseURL, 0, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	return outbox.Uninstall(ctx, pool, logger)
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
