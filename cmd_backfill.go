package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// backfillLogEvery is how often a backfill whose stderr is no terminal logs
// its progress.
const backfillLogEvery = 5 * time.Second

// runBackfill is pg2kafka backfill TABLE: pg2kafka.backfill() chunk by
// chunk, showing its progress.
func runBackfill(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("backfill", "pg2kafka backfill TABLE [flags]",
		`pg2kafka backfill queues a SNAPSHOT event for every row of TABLE, which must be
tracked already (pg2kafka setup TABLE KEY -snapshot=false), in chunks of
-chunk-size rows in primary-key order, each in a short transaction of its own,
as pg2kafka.backfill() does. It shows its progress: a bar on a terminal, a log
line every few seconds otherwise. Ctrl-C stops it after the current chunk;
run it again to resume. Once finished, running it again starts over.`)
	cl.docs = "docs/tables.md"
	chunkSize := cl.Int("chunk-size", 10000, "rows per chunk (1 to 1000000)")
	cl.checkArgs = func(args []string) error {
		if len(args) != 1 {
			return cl.usageError("backfill takes one table, e.g. pg2kafka backfill orders; got %d arguments", len(args))
		}
		return nil
	}
	cfg, err := cl.uses(everyCommand).parse(args, env.getenv, env.stdout)
	if err != nil {
		return err
	}
	if *chunkSize < 1 || *chunkSize > 1_000_000 {
		return cl.usageError("-chunk-size=%d: must be a whole number from 1 to 1000000", *chunkSize)
	}
	table := cl.Arg(0)
	pool, logger, err := connect(ctx, cfg, env.stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	defer pool.Close()

	before, found, err := outbox.Backfill(ctx, pool, table)
	if err != nil {
		return err
	}
	resumed := found && before.FinishedAt == nil
	var show progress
	if isTerminal(env.stderr) {
		show = newProgressBar(env.stderr, table)
	} else {
		show = &progressLog{logger: logger, table: table, every: backfillLogEvery}
	}
	// A chunk runs to its end whatever happens to ctx: Ctrl-C stops the
	// backfill between two chunks, never inside one.
	chunkCtx := context.WithoutCancel(ctx)
	start := time.Now()
	var p outbox.BackfillProgress
	for first := true; ; first = false {
		if ctx.Err() != nil {
			show.stop(p)
			return fmt.Errorf("backfill of %s stopped after %d of %d rows: run pg2kafka backfill %s to resume it", table, p.RowsDone, p.RowsTotal, shellQuote(table))
		}
		if p, err = outbox.BackfillChunk(chunkCtx, pool, table, *chunkSize); err != nil {
			show.stop(p)
			if !first {
				return fmt.Errorf("%w; run pg2kafka backfill %s again to resume after the last chunk", err, shellQuote(table))
			}
			return err
		}
		if first {
			from := int64(0)
			if resumed {
				from = before.RowsDone
			}
			show.begin(p, from)
		}
		show.update(p)
		if p.FinishedAt != nil {
			break
		}
	}
	show.stop(p)
	fmt.Fprintf(env.stdout, "backfill of %s finished: %d rows, %d SNAPSHOT events queued in %s\n", table, p.RowsDone, p.Events, time.Since(start).Round(time.Millisecond))
	return nil
}

// progress shows how a backfill advances.
type progress interface {
	// begin is called after the first chunk; from is the row count a
	// resumed backfill had reached before.
	begin(p outbox.BackfillProgress, from int64)
	update(p outbox.BackfillProgress)
	stop(p outbox.BackfillProgress)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar draws the rows done of this run, their rate and the time
// left, on a terminal. A resumed backfill's bar counts the rows left when
// it resumed, so that its rate and estimate are this run's.
type progressBar struct {
	w     io.Writer
	table string
	// throttle is the least time between two drawings.
	throttle time.Duration
	bar      *progressbar.ProgressBar
	from     int64
}

func newProgressBar(w io.Writer, table string) *progressBar {
	return &progressBar{w: w, table: table, throttle: 100 * time.Millisecond}
}

func (b *progressBar) begin(p outbox.BackfillProgress, from int64) {
	b.from = from
	description := b.table
	if from > 0 {
		description = fmt.Sprintf("%s (resumed after %d rows)", b.table, from)
	}
	b.bar = progressbar.NewOptions64(max(p.RowsTotal-from, 1),
		progressbar.OptionSetWriter(b.w),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rows"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(b.throttle),
		progressbar.OptionSetRenderBlankState(true),
	)
}

func (b *progressBar) update(p outbox.BackfillProgress) {
	done := p.RowsDone - b.from
	// Rows inserted since the backfill started count too.
	if done > b.bar.GetMax64() {
		b.bar.ChangeMax64(done)
	}
	if p.FinishedAt != nil {
		b.bar.ChangeMax64(max(done, 1))
	}
	_ = b.bar.Set64(done)
}

func (b *progressBar) stop(outbox.BackfillProgress) {
	if b.bar != nil {
		_ = b.bar.Exit()
		fmt.Fprintln(b.w)
	}
}

// progressLog logs a backfill's progress every backfillLogEvery, for a
// stderr that is a file or a pipe.
type progressLog struct {
	logger   *slog.Logger
	table    string
	every    time.Duration
	started  time.Time
	from     int64
	lastLog  time.Time
	lastDone int64
}

func (l *progressLog) begin(p outbox.BackfillProgress, from int64) {
	l.started, l.from = time.Now(), from
	attrs := []any{slog.String("table", l.table), slog.Int64("rows_total", p.RowsTotal), slog.Int("chunk_size", p.ChunkSize)}
	if from > 0 {
		attrs = append(attrs, slog.Int64("resumed_after", from))
	}
	l.logger.Info("backfill started", attrs...)
	l.lastLog = l.started
}

func (l *progressLog) update(p outbox.BackfillProgress) {
	if time.Since(l.lastLog) < l.every || p.FinishedAt != nil {
		return
	}
	l.log("backfilling", p)
}

func (l *progressLog) stop(p outbox.BackfillProgress) {
	switch {
	case l.started.IsZero():
	case p.FinishedAt != nil:
		l.log("backfill finished", p)
	default:
		l.log("backfill stopped", p)
	}
}

func (l *progressLog) log(msg string, p outbox.BackfillProgress) {
	elapsed := time.Since(l.started)
	rate := float64(p.RowsDone-l.from) / elapsed.Seconds()
	attrs := []any{
		slog.String("table", l.table),
		slog.Int64("rows_done", p.RowsDone),
		slog.Int64("rows_total", p.RowsTotal),
		slog.Int("rows_per_second", int(rate)),
	}
	if left := p.RowsTotal - p.RowsDone; left > 0 && rate > 0 && p.FinishedAt == nil {
		attrs = append(attrs, slog.Duration("eta", time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second)))
	}
	l.logger.Info(msg, attrs...)
	l.lastLog, l.lastDone = time.Now(), p.RowsDone
}

// shellQuote quotes a table name for the command that resumes its
// backfill, when the shell would otherwise change it.
func shellQuote(s string) string {
	if plainWord.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9_.]+$`)
