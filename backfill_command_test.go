package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// bigTable creates a tracked table of n rows without a snapshot.
func bigTable(t *testing.T, n int) (*pgxpool.Pool, string) {
	t.Helper()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		fmt.Sprintf(`INSERT INTO orders SELECT g, 'new' FROM generate_series(1, %d) g`, n),
		`SELECT pg2kafka.setup('orders', 'id', snapshot => false)`,
	)
	return pool, url
}

func TestBackfillCommandLogsProgress(t *testing.T) {
	t.Parallel()
	pool, url := bigTable(t, 2500)
	got := runCommand(t, map[string]string{"DATABASE_URL": url}, "backfill", "orders", "-chunk-size", "1000")
	if want := regexp.MustCompile(`^backfill of orders finished: 2500 rows, 2500 SNAPSHOT events queued in [0-9.]+m?s\n$`); got.code != 0 || !want.MatchString(got.stdout) {
		t.Errorf("exit status %d, stdout %q; want 0, stdout matching %s", got.code, got.stdout, want)
	}
	want := regexp.MustCompile(`^level=INFO msg="backfill started" table=orders rows_total=2500 chunk_size=1000
level=INFO msg="backfill finished" table=orders rows_done=2500 rows_total=2500 rows_per_second=[0-9]+
$`)
	if !want.MatchString(got.stderr) {
		t.Errorf("stderr:\n%s\nwant it to match:\n%s", got.stderr, want)
	}
	if n := queueLength(t, pool); n != 2500 {
		t.Errorf("%d events queued, want 2500", n)
	}

	// Mistakes.
	env := map[string]string{"DATABASE_URL": url}
	runCommand(t, env, "backfill", "orders", "-chunk-size=0").require(t, 2, "", "pg2kafka: -chunk-size=0: must be a whole number from 1 to 1000000 (see pg2kafka backfill -help)\n")
	mustExec(t, pool, `CREATE TABLE untracked (id int PRIMARY KEY)`)
	runCommand(t, env, "backfill", "untracked").require(t, 1, "",
		"pg2kafka: pg2kafka.backfill: public.untracked is not tracked (SQLSTATE 55000); hint: Call pg2kafka.setup(table, external_id_column, snapshot => false) first: its trigger captures the changes made while the backfill runs.\n")
}

// TestBackfillCommandStopsAfterTheChunkOnSIGINT interrupts a real pg2kafka
// backfill while a chunk waits for a row lock: the chunk still commits, the
// command says how to resume, and resuming finishes the table.
func TestBackfillCommandStopsAfterTheChunkOnSIGINT(t *testing.T) {
	t.Parallel()
	pool, url := bigTable(t, 2500)
	// Row 1500 is in the second chunk: that chunk waits for this lock.
	locker, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback(context.Background())
	if _, err := locker.Exec(t.Context(), `SELECT FROM orders WHERE id = 1500 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	cmd, stdout, stderr := pg2kafkaCommand(t, "DATABASE_URL="+url)
	cmd.Args = append(cmd.Args, "backfill", "orders", "-chunk-size", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second chunk to wait for the row lock", func() bool {
		var waiting bool
		err := pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pg2kafka' AND wait_event_type = 'Lock')`).Scan(&waiting)
		return err == nil && waiting
	})
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// Give the signal time to arrive before the chunk can go on; the
	// outcome is the same if it arrives later, just after the next chunk.
	time.Sleep(100 * time.Millisecond)
	if err := locker.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("backfill exited with %v, want status 1\nstderr:\n%s", err, stderr)
	}
	if want := "pg2kafka: backfill of orders stopped after 2000 of 2500 rows: run pg2kafka backfill orders to resume it\n"; !strings.HasSuffix(stderr.String(), want) || stdout.String() != "" {
		t.Errorf("stdout %q, stderr:\n%s\nwant nothing, and stderr to end %q", stdout, stderr, want)
	}
	if n := queueLength(t, pool); n != 2000 {
		t.Errorf("%d events queued after the interruption, want the 2000 of two chunks", n)
	}

	got := runCommand(t, map[string]string{"DATABASE_URL": url}, "backfill", "orders", "-chunk-size", "1000")
	if got.code != 0 || !strings.HasPrefix(got.stdout, "backfill of orders finished: 2500 rows, 2500 SNAPSHOT events queued") ||
		!strings.HasPrefix(got.stderr, `level=INFO msg="backfill started" table=orders rows_total=2500 chunk_size=1000 resumed_after=2000`+"\n") {
		t.Errorf("resumed backfill: exit status %d, stdout %q, stderr:\n%s", got.code, got.stdout, got.stderr)
	}
	if n := queueLength(t, pool); n != 2500 {
		t.Errorf("%d events queued after resuming, want 2500", n)
	}
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptmx, tty
}

func TestBackfillCommandDrawsABarOnATerminal(t *testing.T) {
	t.Parallel()
	pool, url := bigTable(t, 2500)
	ptmx, tty := openPTY(t)
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&screen, ptmx) // until tty closes
	}()
	var stdout bytes.Buffer
	env := map[string]string{"DATABASE_URL": url}
	err := run(t.Context(), []string{"backfill", "orders", "-chunk-size", "500"}, func(k string) string { return env[k] }, &stdout, tty)
	if err != nil {
		t.Fatal(err)
	}
	tty.Close()
	<-read
	if !strings.HasPrefix(stdout.String(), "backfill of orders finished: 2500 rows") {
		t.Errorf("stdout = %q", stdout.String())
	}
	// The bar's last state: every row, its rate, and the time it took.
	last := screen.String()
	if i := strings.LastIndex(strings.TrimRight(last, "\r\n "), "\r"); i >= 0 {
		last = last[i+1:]
	}
	want := regexp.MustCompile(`^orders 100% \|█{30}\| \(2500/2500, [0-9]+ rows/s\) \[[0-9a-z.]+\]\r\n$`)
	if !want.MatchString(last) {
		t.Errorf("the terminal shows, last:\n%q\nwant it to match %s\nall of it: %q", last, want, screen.String())
	}
	if strings.Contains(screen.String(), "level=") {
		t.Errorf("the terminal shows log lines besides the bar: %q", screen.String())
	}
	if n := queueLength(t, pool); n != 2500 {
		t.Errorf("%d events queued, want 2500", n)
	}
}

// The bar as it advances: rows done of the total, rate, time taken and
// time left.
func TestProgressBar(t *testing.T) {
	t.Parallel()
	var screen bytes.Buffer
	bar := &progressBar{w: &screen, table: "orders"}
	started := time.Now()
	bar.begin(outbox.BackfillProgress{RowsDone: 1000, RowsTotal: 10000}, 0)
	for time.Since(started) < 600*time.Millisecond { // the rate is sampled every half second
		bar.update(outbox.BackfillProgress{RowsDone: 1000, RowsTotal: 10000})
		time.Sleep(10 * time.Millisecond)
	}
	bar.update(outbox.BackfillProgress{RowsDone: 4000, RowsTotal: 10000})
	frames := strings.Split(screen.String(), "\r")
	last := frames[len(frames)-1]
	if want := regexp.MustCompile(`^orders  40% \|█{12} {18}\| \([0-9]+/10000, [0-9]+ rows/s\) \[[0-9]+s:[0-9]+s\]$`); !want.MatchString(last) {
		t.Errorf("the bar shows %q, want it to match %s", last, want)
	}

	// Resumed, the bar counts this run's rows.
	screen.Reset()
	bar = &progressBar{w: &screen, table: "orders"}
	bar.begin(outbox.BackfillProgress{RowsDone: 7000, RowsTotal: 10000}, 6000)
	bar.update(outbox.BackfillProgress{RowsDone: 7000, RowsTotal: 10000})
	frames = strings.Split(screen.String(), "\r")
	if last, want := frames[len(frames)-1], "orders (resumed after 6000 rows)  25% |"; !strings.HasPrefix(last, want) {
		t.Errorf("the resumed bar shows %q, want it to start %q", last, want)
	}
}

// A backfill logging to a file or a pipe says how far it has got every so
// often, with its rate and what is left, then that it finished.
func TestBackfillLogsProgressEverySoOften(t *testing.T) {
	t.Parallel()
	var log syncbuf.Buffer
	l := &progressLog{logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})), table: "orders"} // every 0: each chunk is logged
	l.begin(outbox.BackfillProgress{RowsTotal: 2500, ChunkSize: 1000}, 0)
	for _, done := range []int64{1000, 2000} {
		l.update(outbox.BackfillProgress{RowsDone: done, RowsTotal: 2500, ChunkSize: 1000})
	}
	finished := time.Now()
	l.update(outbox.BackfillProgress{RowsDone: 2500, RowsTotal: 2500, ChunkSize: 1000, FinishedAt: &finished})
	l.stop(outbox.BackfillProgress{RowsDone: 2500, RowsTotal: 2500, ChunkSize: 1000, FinishedAt: &finished})
	want := regexp.MustCompile(`^level=INFO msg="backfill started" table=orders rows_total=2500 chunk_size=1000
level=INFO msg=backfilling table=orders rows_done=1000 rows_total=2500 rows_per_second=[0-9]+ eta=[0-9.]+[µmn]?s
level=INFO msg=backfilling table=orders rows_done=2000 rows_total=2500 rows_per_second=[0-9]+ eta=[0-9.]+[µmn]?s
level=INFO msg="backfill finished" table=orders rows_done=2500 rows_total=2500 rows_per_second=[0-9]+
$`)
	if !want.MatchString(log.String()) {
		t.Errorf("log:\n%s\nwant it to match:\n%s", log.String(), want)
	}
}
