// Package devenv holds what the development programs under script/ share:
// a throwaway database on the local server, and the plumbing of the
// processes they start (a dev broker, pg2kafka itself).
package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// CreateDatabase (re)creates the database name on the server of adminURL,
// its sessions named applicationName, and returns its URL and a function that
// drops it. The drop works even once ctx has ended, and is retried for a
// while, since a program may be ending because Postgres is restarting.
func CreateDatabase(ctx context.Context, adminURL, applicationName, name string) (string, func() error, error) {
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, errors.New("-admin-url must be a postgres:// URL")
	}
	ident := pgx.Identifier{name}.Sanitize()
	if err := AdminExec(ctx, adminURL, applicationName, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)", "CREATE DATABASE "+ident); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop := func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		var err error
		for range 10 {
			if err = AdminExec(ctx, adminURL, applicationName, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("drop database %s: %w", name, err)
			case <-time.After(time.Second):
			}
		}
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	u.Path = "/" + name
	return u.String(), drop, nil
}

// AdminExec runs statements, one after the other, over a connection of its
// own to adminURL.
func AdminExec(ctx context.Context, adminURL, applicationName string, statements ...string) error {
	cfg, err := pgx.ParseConfig(adminURL)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = applicationName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, sql := range statements {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

// PeakRSS returns the most memory a finished process ever had resident, in
// bytes.
func PeakRSS(state *os.ProcessState) int64 {
	usage, ok := state.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return usage.Maxrss * 1024 // kilobytes on Linux
}

// FirstLine is an io.Writer that hands the first line written to it to Line
// and discards the rest: how a dev broker's address is read from its stdout
// without a pipe that must be drained before Wait.
type FirstLine struct {
	Line chan string

	mu   sync.Mutex
	buf  bytes.Buffer
	sent bool
}

func NewFirstLine() *FirstLine { return &FirstLine{Line: make(chan string, 1)} }

func (w *FirstLine) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent {
		return len(b), nil
	}
	w.buf.Write(b)
	if line, _, ok := bytes.Cut(w.buf.Bytes(), []byte("\n")); ok {
		w.Line <- string(bytes.TrimSpace(line))
		w.sent = true
	}
	return len(b), nil
}
