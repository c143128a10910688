// Command chaos injects faults into running pg2kafka replicas and checks,
// record by record, that no event was lost and none overtook an earlier
// event of its key ("never lose, never reorder").
//
// On the local Postgres, in a database of its own (pg2kafka_chaos, dropped
// at the end), it builds pg2kafka and the dev broker, starts the broker on a
// fixed port with its data on disk (so that it can be stopped and started
// again as the same broker), and for each scenario fills a fresh table's
// queue, starts three replicas and injects its fault:
//
//	kill      kill -9 a random replica every 100ms–1s and restart it, until
//	          the queue is empty and there were at least -kills kills
//	broker    stop the broker for -outage, then start it again; meanwhile no
//	          replica may exit, grow past -max-rss or hold a transaction open
//	          longer than SEND_TIMEOUT + 5s
//	postgres  terminate pg2kafka's sessions -terminations times, then restart
//	          the Postgres server
//	sigterm   with a writer running, SIGTERM every replica (each must exit 0
//	          within SHUTDOWN_TIMEOUT + 5s) and restart them; no duplicates
//	freeze    with a writer running, SIGSTOP a random replica for one to two
//	          LANE_TAKEOVER_TIMEOUTs and SIGCONT it, -freezes times; reports
//	          the longest any key waited for an event written meanwhile
//
// Then it waits for the queue to empty and the topic to settle, reads every
// record, and checks each key's versions: all arrived, in order, replays of
// earlier versions counted as duplicates. It prints a markdown table to
// stdout, logs progress to stderr, and exits 1 if a scenario failed:
//
//	go run ./script/chaos -quick                # about two minutes
//	go run ./script/chaos                       # 1M events a scenario
//	go run ./script/chaos -scenario kill -kills 200 -seed 42
//
// Replicas' logs are in a temporary directory, kept (and named) when a
// scenario fails. Every subprocess is stopped when chaos ends, also on
// Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pg2kafka/pg2kafka/outbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errFailed):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

// errFailed is returned when the run went through and a scenario failed.
var errFailed = errors.New("a scenario failed")

// chaos is the run's environment.
type chaos struct {
	cfg    *config
	log    *slog.Logger
	dir    string
	logDir string
	bins   binaries
	broker *broker
	dbURL  string
	pool   *pgxpool.Pool
	kafka  *kadm.Client
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	c := &chaos{cfg: cfg, log: logger}
	logger.Info("chaos", "scenarios", strings.Join(cfg.Scenarios, ","), "events", cfg.Events, "keys", cfg.Keys, "seed", cfg.Seed)

	if c.dir, err = os.MkdirTemp("", "pg2kafka-chaos-"); err != nil {
		return err
	}
	// Kept for a look at the logs when something failed, not when the run
	// was only interrupted.
	keep := cfg.Keep
	defer func() {
		if keep || (err != nil && ctx.Err() == nil) {
			logger.Info("kept the run's binaries, logs and broker data", "dir", c.dir)
			return
		}
		_ = os.RemoveAll(c.dir)
	}()
	c.logDir = filepath.Join(c.dir, "logs")
	if err := os.Mkdir(c.logDir, 0o755); err != nil {
		return err
	}

	logger.Info("building pg2kafka and devkafka", "dir", c.dir)
	if c.bins, err = build(ctx, c.dir, stderr); err != nil {
		return err
	}

	port, err := freePort()
	if err != nil {
		return err
	}
	c.broker = &broker{bin: c.bins.devkafka, port: port, dataDir: filepath.Join(c.dir, "kafka-data"), logPath: filepath.Join(c.logDir, "devkafka.log")}
	if err := c.broker.start(ctx); err != nil {
		return err
	}
	defer func() {
		if stopErr := c.broker.stop(); stopErr != nil {
			logger.Warn("stopping the broker", "error", stopErr)
		}
	}()
	client, err := kgo.NewClient(kgo.SeedBrokers(c.broker.addr), kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("kafka admin client: %w", err)
	}
	c.kafka = kadm.NewClient(client)
	defer c.kafka.Close()

	dbURL, dropDatabase, err := createDatabase(ctx, cfg.AdminURL, cfg.Database)
	if err != nil {
		return err
	}
	defer func() {
		if dropErr := dropDatabase(); dropErr != nil {
			logger.Warn("dropping the chaos database", "error", dropErr)
		}
	}()
	c.dbURL = dbURL
	if c.pool, err = openPool(ctx, dbURL); err != nil {
		return err
	}
	defer c.pool.Close()
	// Installed here too, so that tables can be set up before the first
	// replica, which also migrates, has started.
	if err := outbox.Migrate(ctx, c.pool, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}

	var autovacuum string
	if err := c.pool.QueryRow(ctx, `SHOW autovacuum`).Scan(&autovacuum); err == nil && autovacuum != "on" {
		logger.Warn("autovacuum is off on this server: the queue's dead rows pile up during a drain and slow it down; chaos vacuums the queue only between scenarios")
	}

	var results []*result
	for _, name := range cfg.Scenarios {
		logger.Info("scenario", "name", name)
		r := c.runScenario(ctx, name)
		results = append(results, r)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logger.Info("scenario done", "name", name, "result", r.verdictWord(), "failures", len(r.failures))
	}
	writeReport(stdout, cfg, results)
	for _, r := range results {
		if len(r.failures) > 0 {
			keep = true
			return errFailed
		}
	}
	return nil
}

// binaries are the programs chaos builds from this module and runs.
type binaries struct {
	pg2kafka string
	devkafka string
}

// build builds pg2kafka and the dev broker into dir, as a user would with go
// build, from the module's root.
func build(ctx context.Context, dir string, stderr io.Writer) (binaries, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return binaries{}, fmt.Errorf("find the module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return binaries{}, fmt.Errorf("run chaos inside the pg2kafka module (go env GOMOD is %q)", gomod)
	}
	b := binaries{pg2kafka: filepath.Join(dir, "pg2kafka"), devkafka: filepath.Join(dir, "devkafka")}
	for out, pkg := range map[string]string{b.pg2kafka: ".", b.devkafka: "./script/devkafka"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = filepath.Dir(gomod)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Run(); err != nil {
			return binaries{}, fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	return b, nil
}

// freePort returns a loopback port nothing listens on now, for the broker to
// keep across its restarts.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// replicaEnv is the whole environment of replica i: nothing of the calling
// shell's, so that its settings cannot skew the run.
func (c *chaos) replicaEnv(i int) []string {
	env := []string{
		"DATABASE_URL=" + c.dbURL,
		fmt.Sprintf("KAFKA_PRODUCER_URL=127.0.0.1:%d", c.broker.port),
		"KAFKA_CREATE_TOPICS=true",
		fmt.Sprintf("WORKERS=%d", workers),
		fmt.Sprintf("BATCH_SIZE=%d", batchSize),
		"SEND_TIMEOUT=" + sendTimeout.String(),
		"SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(),
		"LANE_TAKEOVER_TIMEOUT=" + laneTakeoverTimeout.String(),
		"LOG_LEVEL=warn",
	}
	if i == 0 {
		env = append(env, "PERFORM_MIGRATIONS=true")
	}
	return env
}

// topic is the topic of a table's events.
func (c *chaos) topic(table string) string { return "pg2kafka." + c.cfg.Database + "." + table }
