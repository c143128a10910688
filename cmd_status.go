package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// runStatus is pg2kafka status: what pg2kafka is doing in the database, and
// whether anything needs attention, in the exit status too.
func runStatus(ctx context.Context, args []string, env environment) error {
	cl := newCommandLine("status", "pg2kafka status [flags]",
		`pg2kafka status shows the schema version, each tracked table with its key
column and options, the events queued and the age of the oldest, dead letters,
backfills, and the shippers connected with the lanes each owns. It exits 0
when all is well and 1 when something needs attention: dead letters, an
oldest event older than -max-age, a schema of another version. Cheap enough
for cron on a queue of millions: counts that would read the whole queue are
estimated from a sample, and marked ~.`)
	cl.docs = "docs/operations.md"
	asJSON := cl.Bool("json", false, "print the status as JSON")
	maxAge := cl.Duration("max-age", 5*time.Minute, "an oldest queued event older than this needs attention (0: never)")
	cfg, err := cl.uses(everyCommand).parse(args, env.getenv, env.stdout)
	if err != nil {
		return err
	}
	if *maxAge < 0 {
		return cl.usageError("-max-age=%s: must be 0 or a positive duration such as 30s, 5m or 1h", *maxAge)
	}
	pool, _, err := connect(ctx, cfg, env.stderr, slog.LevelDebug)
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := outbox.ReadStatus(ctx, pool)
	if err != nil {
		return err
	}
	problems := s.Problems(*maxAge)
	if *asJSON {
		out := struct {
			*outbox.Status
			Healthy  bool     `json:"healthy"`
			Problems []string `json:"problems"`
		}{s, len(problems) == 0, append([]string{}, problems...)}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		printStatus(env.stdout, s, problems)
	}
	if len(problems) > 0 {
		return &attentionError{problems}
	}
	return nil
}

// attentionError is pg2kafka status finding something wrong: exit status 1,
// the problems on stderr for whoever reads cron's mail.
type attentionError struct{ problems []string }

func (e *attentionError) Error() string {
	return "needs attention: " + strings.Join(e.problems, "; ")
}

func printStatus(w io.Writer, s *outbox.Status, problems []string) {
	fmt.Fprintf(w, "schema:       version %d (this pg2kafka needs %d)\n", s.SchemaVersion, s.WantSchemaVersion)
	if s.SchemaVersion == 0 {
		printProblems(w, problems)
		return
	}
	q := s.Queue
	fmt.Fprintf(w, "queued:       %s events", count(q.Events, q.Estimated))
	if q.Oldest != nil {
		fmt.Fprintf(w, ", the oldest %s old (id %d, %s)", age(q.Oldest.Age), q.Oldest.ID, q.Oldest.Table)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "dead letters: %d\n", s.DeadLetters)
	fmt.Fprintf(w, "dead rows:    %s\n", describeHorizon(s.Horizon, s.At))

	fmt.Fprintf(w, "\ntables (%d tracked):\n", tracked(s.Tables))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  TABLE\tKEY\tQUEUED\tOLDEST\tDEAD\tBACKFILL\tOPTIONS")
	for _, t := range s.Tables {
		key, options := "-", "not tracked"
		if o := t.Options; o != nil {
			key, options = o.KeyColumn, describeOptions(o)
		}
		oldest := "-"
		if t.OldestAge != nil {
			oldest = age(*t.OldestAge)
		}
		backfill := "-"
		if b := t.Backfill; b != nil {
			switch {
			case b.FinishedAt != nil:
				backfill = fmt.Sprintf("done, %d rows", b.RowsDone)
			case b.RowsTotal > 0:
				backfill = fmt.Sprintf("%d/%d rows (%d%%)", b.RowsDone, b.RowsTotal, 100*b.RowsDone/b.RowsTotal)
			default:
				backfill = fmt.Sprintf("%d rows", b.RowsDone)
			}
		}
		fmt.Fprintf(tw, "  %s.%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Schema, t.Name, key, count(t.Queued, q.Estimated), oldest, t.DeadLetters, backfill, options)
	}
	tw.Flush()

	owned := 0
	for _, c := range s.Shippers {
		owned += len(c.Lanes)
	}
	fmt.Fprintf(w, "\nshippers:     %d connections, owning %d of %d lanes\n", len(s.Shippers), owned, s.Lanes)
	if len(s.Shippers) > 0 {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PID\tFROM\tSINCE\tLANES")
		for _, c := range s.Shippers {
			from := c.ClientAddr
			if from == "" {
				from = "-"
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\n", c.PID, from, c.Since.UTC().Format(time.RFC3339), lanes(c.Lanes))
		}
		tw.Flush()
	}
	printProblems(w, problems)
}

// describeHorizon says how many dead rows the queue holds and what keeps
// vacuum from removing them: the oldest snapshot, and whose it is.
func describeHorizon(h outbox.Horizon, now time.Time) string {
	out := fmt.Sprintf("~%d in the queue", h.DeadRows)
	if h.Holder == "" {
		return out + "; no snapshot holds them"
	}
	out += "; the oldest snapshot, which vacuum must keep them for, is "
	if a := h.Age(now); a > 0 {
		out += age(outbox.Duration(a)) + " old"
	} else {
		out += fmt.Sprintf("%d transactions old", h.XIDAge)
	}
	out += ", held by " + h.Holder
	var who []string
	if h.PID != 0 {
		who = append(who, fmt.Sprintf("pid %d", h.PID))
	}
	if h.Name != "" {
		who = append(who, h.Name)
	}
	if h.State != "" {
		who = append(who, h.State)
	}
	if !h.QueryStart.IsZero() {
		who = append(who, "query since "+h.QueryStart.UTC().Format(time.RFC3339))
	}
	if len(who) > 0 {
		out += " (" + strings.Join(who, ", ") + ")"
	}
	return out
}

func printProblems(w io.Writer, problems []string) {
	if len(problems) == 0 {
		fmt.Fprintln(w, "\nhealthy")
		return
	}
	fmt.Fprintln(w, "\nneeds attention:")
	for _, p := range problems {
		fmt.Fprintln(w, "  - "+p)
	}
}

func tracked(tables []outbox.TableStatus) int {
	n := 0
	for _, t := range tables {
		if t.Tracked {
			n++
		}
	}
	return n
}

// count shows a count, marked ~ when it is an estimate.
func count(n int64, estimated bool) string {
	if estimated {
		return fmt.Sprintf("~%d", n)
	}
	return fmt.Sprint(n)
}

func age(d outbox.Duration) string {
	t := time.Duration(d)
	switch {
	case t < time.Second:
		return t.Round(time.Millisecond).String()
	default:
		return t.Round(time.Second).String()
	}
}

// describeOptions shows a table's setup() options other than defaults.
func describeOptions(t *outbox.TrackedTable) string {
	var parts []string
	if strings.Join(t.Operations, ",") != "INSERT,UPDATE,DELETE" {
		parts = append(parts, "operations="+strings.Join(t.Operations, ","))
	}
	if t.Columns != nil {
		parts = append(parts, "columns="+strings.Join(t.Columns, ","))
	}
	if t.IncludeOld {
		parts = append(parts, "include-old")
	}
	if t.Filter != "" {
		parts = append(parts, fmt.Sprintf("filter=%q", t.Filter))
	}
	if t.Topic != "" {
		parts = append(parts, "topic="+t.Topic)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// lanes shows lane numbers as ranges: 0-15,32.
func lanes(ls []int32) string {
	if len(ls) == 0 {
		return "none"
	}
	var parts []string
	for i := 0; i < len(ls); {
		j := i
		for j+1 < len(ls) && ls[j+1] == ls[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ls[i], ls[j]))
		} else {
			parts = append(parts, fmt.Sprint(ls[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
