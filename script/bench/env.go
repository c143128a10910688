package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
)

// stopTimeout bounds how long a subprocess may take to stop after SIGTERM;
// pg2kafka's own shutdown is bounded by its SHUTDOWN_TIMEOUT (5s).
const stopTimeout = 30 * time.Second

// binaries are the programs the suite builds from this module and runs.
type binaries struct {
	root     string // the module's directory
	dir      string // where they are built
	pg2kafka string
	devkafka string
}

// buildBinaries builds pg2kafka and the dev broker into dir, exactly as a
// user would with go build.
func buildBinaries(ctx context.Context, dir string, stderr io.Writer) (binaries, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return binaries{}, fmt.Errorf("find the module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return binaries{}, fmt.Errorf("run the benchmark inside the pg2kafka module (go env GOMOD is %q)", gomod)
	}
	b := binaries{
		root:     filepath.Dir(gomod),
		dir:      dir,
		pg2kafka: filepath.Join(dir, "pg2kafka"),
		devkafka: filepath.Join(dir, "devkafka"),
	}
	if err := goBuild(ctx, b.root, stderr, b.pg2kafka, "."); err != nil {
		return binaries{}, err
	}
	if err := goBuild(ctx, b.root, stderr, b.devkafka, "./script/devkafka"); err != nil {
		return binaries{}, err
	}
	return b, nil
}

func goBuild(ctx context.Context, root string, stderr io.Writer, out, pkg string, flags ...string) error {
	args := append([]string{"build", "-o", out}, flags...)
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// pprofSource is added to pg2kafka's main package, through a build overlay
// and never on disk in the repository, for the one profiled drain: it serves
// net/http/pprof on the address the suite names.
const pprofSource = `package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("PG2KAFKA_BENCH_PPROF_ADDR"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
`

// buildProfiled builds pg2kafka with pprofSource added, and returns its path.
func (b binaries) buildProfiled(ctx context.Context, stderr io.Writer) (string, error) {
	src := filepath.Join(b.dir, "bench_pprof.go")
	if err := os.WriteFile(src, []byte(pprofSource), 0o644); err != nil {
		return "", err
	}
	overlay, err := json.Marshal(map[string]map[string]string{
		"Replace": {filepath.Join(b.root, "zz_bench_pprof.go"): src},
	})
	if err != nil {
		return "", err
	}
	overlayPath := filepath.Join(b.dir, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(b.dir, "pg2kafka-pprof")
	return out, goBuild(ctx, b.root, stderr, out, ".", "-overlay", overlayPath)
}

// startBroker starts the dev broker on a free port and returns it with its
// address, which it prints as its first line.
func startBroker(ctx context.Context, bin binaries, partitions int, stderr io.Writer) (*process, string, error) {
	cmd := exec.Command(bin.devkafka, "-port", "0", "-partitions", strconv.Itoa(partitions), "-auto-create")
	addr := devenv.NewFirstLine()
	cmd.Stdout, cmd.Stderr = addr, stderr
	p, err := startProcess("devkafka", cmd)
	if err != nil {
		return nil, "", err
	}
	select {
	case line := <-addr.Line:
		return p, line, nil
	case <-p.Exited():
		err = fmt.Errorf("devkafka exited before printing its address: %w", p.err)
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("devkafka printed no address within 30s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	_, _ = p.Stop(stopTimeout)
	return nil, "", err
}

// newKafkaAdmin returns an admin client of the broker, for counting records
// on topics and for creating and deleting them. Its metadata may be
// refreshed often: a topic is created and deleted per drain, and with
// franz-go's default of at most one refresh every 5s, the count of a new
// topic's records would lag by as much.
func newKafkaAdmin(broker string) (*kadm.Client, error) {
	client, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.MetadataMinAge(50*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("kafka admin client: %w", err)
	}
	return kadm.NewClient(client), nil
}

// connect opens the suite's pool on the benchmark database, with room for
// every client the sections hold at once, and installs pg2kafka's schema and
// the benchmark's tables.
func connect(ctx context.Context, dbURL string, maxConns int, logger *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(maxConns)
	cfg.ConnConfig.RuntimeParams["application_name"] = "pg2kafka-bench"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the benchmark database: %w", err)
	}
	if err := outbox.Migrate(ctx, pool, logger); err != nil {
		pool.Close()
		return nil, err
	}
	if _, err := pool.Exec(ctx, schemaSQL); err != nil {
		pool.Close()
		return nil, fmt.Errorf("create the benchmark tables: %w", err)
	}
	return pool, nil
}

// serverVersion returns Postgres's version string, for the report.
func serverVersion(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var v string
	err := pool.QueryRow(ctx, `SELECT version()`).Scan(&v)
	return v, err
}
