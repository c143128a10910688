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
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/outbox"
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

// command is one of pg2kafka's commands: pg2kafka NAME [flags].
type command struct {
	name    string
	summary string // one line for pg2kafka -help
	run     func(ctx context.Context, args []string, env environment) error
}

// environment is what a command is given of its process.
type environment struct {
	getenv         func(string) string
	stdout, stderr io.Writer
}

// commands are pg2kafka's commands, in the order -help lists them; the first
// is the default.
func commands() []command {
	return []command{
		{"ship", "ship queued events to the destination (the default)", runShip},
		{"migrate", "install or upgrade the pg2kafka schema, print its version", runMigrate},
		{"status", "show the queue, the tables, the shippers; exit 1 if something needs attention", runStatus},
		{"setup", "track a table: pg2kafka setup TABLE KEY_COLUMN [options]", runSetup},
		{"backfill", "snapshot a tracked table's rows in chunks, showing progress", runBackfill},
		{"teardown", "stop tracking a table", runTeardown},
		{"requeue", "put dead letters back in the queue", runRequeue},
		{"version", "print pg2kafka's version and the schema version it needs", runVersion},
		{"uninstall", "remove pg2kafka from the database, leaving the tables as they are", runUninstall},
	}
}

// run runs the command args name (ship when args start with a flag or are
// empty), from its settings to its end.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	env := environment{getenv: getenv, stdout: stdout, stderr: stderr}
	all := commands()
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return all[0].run(ctx, args, env)
	}
	name, rest := args[0], args[1:]
	if name == "help" {
		return help(ctx, rest, env)
	}
	for _, c := range all {
		if c.name == name {
			return c.run(ctx, rest, env)
		}
	}
	shown := fmt.Sprintf("%q", name)
	if strings.ContainsAny(name, "@=") {
		shown = "(not shown: it may hold a password)"
	}
	return &configError{fmt.Sprintf("unknown command %s: want one of %s; settings are flags or environment variables (see pg2kafka -help)", shown, strings.Join(commandNames(), ", "))}
}

// help is pg2kafka help [command]: the usage of pg2kafka, or of the command.
func help(ctx context.Context, args []string, env environment) error {
	name := "ship"
	if len(args) > 0 {
		name = args[0]
	}
	return run(ctx, []string{name, "-help"}, env.getenv, env.stdout, env.stderr)
}

func commandNames() []string {
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return names
}

// commandList is the list of commands for pg2kafka -help.
func commandList() string {
	var b strings.Builder
	for _, c := range commands() {
		fmt.Fprintf(&b, "    %-10s %s\n", c.name, c.summary)
	}
	return b.String()
}

// connect opens a pool for a command other than ship: one attempt, since a
// person or a cron job waits for the answer. Postgres' notices are logged
// at noticeLevel.
func connect(ctx context.Context, cfg Config, stderr io.Writer, noticeLevel slog.Level) (*pgxpool.Pool, *slog.Logger, error) {
	logger := newLogger(cfg, stderr, cfg.LogLevel)
	pool, err := outbox.Open(ctx, cfg.DatabaseURL, logger, noticeLevel)
	return pool, logger, err
}

func newLogger(cfg Config, w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
