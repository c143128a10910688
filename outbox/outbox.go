// Package outbox is the Postgres side of pg2kafka at run time: it installs the
// schema, claims batches of queued change events and deletes them once their
// destination has acknowledged them. It knows SQL and nothing of Kafka.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Event is one queued change, as the trigger or setup() wrote it, or one
// event of pg2kafka.emit() (Statement StatementEvent), whose ExternalID is
// the record key, Topic the topic, Data the payload (a JSON string holding
// its exact text, or the jsonb value itself) and Old the headers, a JSON
// object of strings or nil.
type Event struct {
	ID          int64     `db:"id"`
	UUID        uuid.UUID `db:"uuid"`
	ExternalID  *string   `db:"external_id"`
	TableSchema string    `db:"table_schema"`
	TableName   string    `db:"table_name"`
	Statement   string    `db:"statement"`
	Data        []byte    `db:"data"` // raw JSON, as Postgres printed it
	CreatedAt   time.Time `db:"created_at"`
	// Old is what the row held before an UPDATE or DELETE, for tables set up
	// with include_old; nil otherwise.
	Old json.RawMessage `db:"old"`
	// Topic is the topic setup(topic => …) chose for the table; nil for the
	// default name.
	Topic *string `db:"topic"`
}

// StatementEvent is the statement of an event queued by pg2kafka.emit().
const StatementEvent = "EVENT"

// Table names a tracked table as its events record it.
type Table struct {
	Schema string
	Name   string
}

// Table returns the table the event came from; for an event of
// pg2kafka.emit(), Schema "" (which no schema is named) and Name its topic,
// so that what is done per table is done per topic for emitted events.
func (e *Event) Table() Table { return Table{Schema: e.TableSchema, Name: e.TableName} }

// Connect opens a connection pool for the shipper and waits until Postgres
// answers, retrying with backoff while it is unreachable (starting, or
// restarting) and logging each attempt; refused credentials or a missing
// database end the wait at once, since retrying cannot fix them.
//
// Unless the connection string says otherwise, sessions are named pg2kafka
// (visible in pg_stat_activity) and Postgres ends any session left idle inside
// a transaction for idleInTxTimeout, so a stuck shipper cannot hold a claim,
// and with it the xmin horizon, for long. Postgres' warnings to any of the
// pool's sessions are logged, its notices at debug level.
func Connect(ctx context.Context, connString string, idleInTxTimeout time.Duration, logger *slog.Logger) (*pgxpool.Pool, error) {
	return connect(ctx, connString, idleInTxTimeout, logger, slog.LevelDebug, true)
}

// Open is Connect for a command run by hand: it tries once, and returns the
// error if Postgres does not answer. Postgres' notices are logged at
// noticeLevel: for a command that calls setup(), say, they are part of the
// answer.
func Open(ctx context.Context, connString string, logger *slog.Logger, noticeLevel slog.Level) (*pgxpool.Pool, error) {
	return connect(ctx, connString, 0, logger, noticeLevel, false)
}

func connect(ctx context.Context, connString string, idleInTxTimeout time.Duration, logger *slog.Logger, noticeLevel slog.Level, wait bool) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("outbox: parse DATABASE_URL: %w", err)
	}
	params := cfg.ConnConfig.RuntimeParams
	if _, ok := params["application_name"]; !ok {
		params["application_name"] = "pg2kafka"
	}
	if _, ok := params["idle_in_transaction_session_timeout"]; !ok && idleInTxTimeout > 0 {
		params["idle_in_transaction_session_timeout"] = fmt.Sprint(idleInTxTimeout.Milliseconds())
	}
	cfg.ConnConfig.OnNotice = logNotice(logger, noticeLevel)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox: connect: %w", err)
	}
	where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	delay := 100 * time.Millisecond
	for {
		err := pool.Ping(ctx)
		if err == nil {
			return pool, nil
		}
		if ctx.Err() != nil || isPermanent(err) || !wait {
			pool.Close()
			// pgx reports every attempt, and with sslmode=prefer (the
			// default) it tries twice, with TLS and without: Postgres'
			// refusal once is enough.
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return nil, fmt.Errorf("outbox: connect to %s as %s: %w", where, cfg.ConnConfig.User, pgErr)
			}
			return nil, &connectError{"outbox: connect to " + where + ": " + onceEach(err.Error()), err}
		}
		logger.Warn("waiting for Postgres", slog.String("database", where), slog.Any("error", err), slog.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// connectError is a failure to connect, each of pgx's attempts that failed
// alike told once.
type connectError struct {
	msg string
	err error
}

func (e *connectError) Error() string { return e.msg }
func (e *connectError) Unwrap() error { return e.err }

// onceEach drops the repeated lines of pgx's report of its attempts, and
// makes one line of a report left with one attempt.
func onceEach(report string) string {
	var lines []string
	for _, line := range strings.Split(report, "\n") {
		if !slices.Contains(lines, line) {
			lines = append(lines, line)
		}
	}
	if len(lines) == 2 {
		return lines[0] + " " + strings.TrimSpace(lines[1])
	}
	return strings.Join(lines, "\n")
}

// logNotice returns a handler that logs what Postgres tells a session
// besides its results: a WARNING (a migration that could not create the
// shipper's role, say) as a warning, anything milder (CREATE … IF NOT EXISTS
// finding the object there) at noticeLevel.
func logNotice(logger *slog.Logger, noticeLevel slog.Level) pgconn.NoticeHandler {
	return func(_ *pgconn.PgConn, n *pgconn.Notice) {
		level := noticeLevel
		if n.Severity == "WARNING" {
			level = slog.LevelWarn
		}
		attrs := []slog.Attr{slog.String("message", n.Message)}
		if n.Detail != "" {
			attrs = append(attrs, slog.String("detail", n.Detail))
		}
		if n.Hint != "" {
			attrs = append(attrs, slog.String("hint", n.Hint))
		}
		logger.LogAttrs(context.Background(), level, "postgres "+strings.ToLower(n.Severity), attrs...)
	}
}

// isPermanent reports whether a connection error is one that waiting will
// not cure.
func isPermanent(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "28P01", // invalid_password
		"28000", // invalid_authorization_specification: no such role, or pg_hba.conf refuses it
		"3D000": // invalid_catalog_name: no such database
		return true
	}
	return false
}

// CurrentDatabase returns the name of the database the pool is connected to,
// which names the topics.
func CurrentDatabase(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var name string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		return "", fmt.Errorf("outbox: read database name: %w", err)
	}
	return name, nil
}
