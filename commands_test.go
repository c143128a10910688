package main

import (
	"bytes"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// result is what a person running a command sees.
type result struct {
	code           int
	stdout, stderr string
}

var logTime = regexp.MustCompile(`(?m)^time=\S+ `)

// runCommand runs pg2kafka with args as main would, and returns its exit
// status and output, the logs' times left out.
func runCommand(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), args, func(k string) string { return env[k] }, &stdout, &stderr)
	code := exitCode(err, &stderr)
	return result{code, stdout.String(), logTime.ReplaceAllString(stderr.String(), "")}
}

func (r result) require(t *testing.T, code int, stdout, stderr string) {
	t.Helper()
	if r.code != code || r.stdout != stdout || r.stderr != stderr {
		t.Errorf("exit status %d, stdout:\n%s\nstderr:\n%s\nwant %d, stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr, code, stdout, stderr)
	}
}

// settingsListed returns the settings a usage lists, by their variables.
func settingsListed(usage string) []string {
	var names []string
	for line := range strings.Lines(usage) {
		if strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") && !strings.HasPrefix(line, "  -") {
			name, _, _ := strings.Cut(strings.TrimSpace(line), ",")
			names = append(names, name)
		}
	}
	return names
}

func TestCommandHelpListsOnlyTheSettingsItUses(t *testing.T) {
	t.Parallel()
	postgres := []string{"DATABASE_URL", "LOG_LEVEL", "LOG_FORMAT"}
	for _, tt := range []struct {
		command  string
		synopsis string
		settings []string
	}{
		{"migrate", "pg2kafka migrate [flags]", postgres},
		{"uninstall", "pg2kafka uninstall [flags]", postgres},
		{"version", "pg2kafka version", nil},
	} {
		t.Run(tt.command, func(t *testing.T) {
			t.Parallel()
			got := runCommand(t, nil, tt.command, "-help")
			if got.code != 0 || got.stderr != "" {
				t.Fatalf("exit status %d, stderr %q; want 0 and nothing", got.code, got.stderr)
			}
			if !strings.Contains(got.stdout, "\nUsage: "+tt.synopsis+"\n") {
				t.Errorf("usage lacks its synopsis %q:\n%s", tt.synopsis, got.stdout)
			}
			if listed := settingsListed(got.stdout); fmt.Sprint(listed) != fmt.Sprint(tt.settings) {
				t.Errorf("usage lists the settings %v, want %v:\n%s", listed, tt.settings, got.stdout)
			}
			if again := runCommand(t, nil, "help", tt.command); again != got {
				t.Errorf("pg2kafka help %s differs from pg2kafka %[1]s -help:\n%s", tt.command, again.stdout)
			}
		})
	}
}

// pg2kafka alone, with flags or none, is pg2kafka ship.
func TestShipIsTheDefaultCommand(t *testing.T) {
	t.Parallel()
	usage := runCommand(t, nil, "-help")
	if usage.code != 0 || !strings.Contains(usage.stdout, "\n    uninstall  remove pg2kafka from the database") {
		t.Fatalf("pg2kafka -help: exit status %d, it does not list the commands:\n%s", usage.code, usage.stdout)
	}
	for _, args := range [][]string{{"ship", "-help"}, {"help"}, {"help", "ship"}} {
		if got := runCommand(t, nil, args...); got != usage {
			t.Errorf("pg2kafka %s differs from pg2kafka -help:\n%s", strings.Join(args, " "), got.stdout)
		}
	}
	env := map[string]string{"DATABASE_URL": "postgres://u@h/db", "DRY_RUN": "true"}
	runCommand(t, env, "ship", "-batch-size=0").require(t, 2, "", "pg2kafka: -batch-size=\"0\": must be a whole number from 1 to 100000\n")
	runCommand(t, env, "ship", "orders").require(t, 2, "", "pg2kafka: unexpected argument \"orders\": settings are flags or environment variables (see pg2kafka -help)\n")
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	runCommand(t, nil, "shipp").require(t, 2, "",
		"pg2kafka: unknown command \"shipp\": want one of ship, migrate, status, setup, backfill, teardown, requeue, version, uninstall; settings are flags or environment variables (see pg2kafka -help)\n")
	// Someone pasting the connection string as an argument.
	runCommand(t, nil, "postgres://app:hunter2@db/shop").require(t, 2, "",
		"pg2kafka: unknown command (not shown: it may hold a password): want one of ship, migrate, status, setup, backfill, teardown, requeue, version, uninstall; settings are flags or environment variables (see pg2kafka -help)\n")
}

func TestVersionCommand(t *testing.T) {
	t.Parallel()
	got := runCommand(t, nil, "version")
	want := regexp.MustCompile(fmt.Sprintf(`^pg2kafka \S.* \(schema version %d, go1\.\S+\)\n$`, outbox.LatestVersion()))
	if got.code != 0 || !want.MatchString(got.stdout) || got.stderr != "" {
		t.Errorf("exit status %d, stdout %q, stderr %q; want 0, stdout matching %s", got.code, got.stdout, got.stderr, want)
	}
	runCommand(t, nil, "version", "-v").require(t, 2, "", "pg2kafka: flag provided but not defined: -v (see pg2kafka version -help)\n")
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	env := map[string]string{"DATABASE_URL": url}
	want := fmt.Sprintf("pg2kafka schema at version %d\n", outbox.LatestVersion())

	first := runCommand(t, env, "migrate")
	if first.code != 0 || first.stdout != want || strings.Count(first.stderr, `msg="applied migration"`) != int(outbox.LatestVersion()) {
		t.Errorf("first migrate: exit status %d, stdout %q, stderr:\n%s\nwant 0, %q, each migration logged", first.code, first.stdout, first.stderr, want)
	}
	// Already there: nothing applied, nothing logged.
	runCommand(t, env, "migrate").require(t, 0, want, "")
	if err := outbox.CheckSchema(t.Context(), pool); err != nil {
		t.Errorf("after migrate: %v", err)
	}
	runCommand(t, env, "migrate", "now").require(t, 2, "", "pg2kafka: unexpected argument \"now\": settings are flags or environment variables (see pg2kafka migrate -help)\n")
}

// A role Postgres refuses is told once, although pgx tries twice (with TLS
// and without).
func TestRefusedRoleIsToldOnce(t *testing.T) {
	t.Parallel()
	_, connString := pgtest.NewPool(t)
	u, err := url.Parse(connString)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("no_such_role", "hunter2")
	u.RawQuery = "" // sslmode=prefer, pgx's default: two attempts
	where := fmt.Sprintf("%s:%s%s", u.Hostname(), u.Port(), u.Path)
	for _, command := range []string{"status", "migrate"} {
		runCommand(t, map[string]string{"DATABASE_URL": u.String()}, command).require(t, 1, "",
			"pg2kafka: outbox: connect to "+where+" as no_such_role: FATAL: role \"no_such_role\" does not exist (SQLSTATE 28000)\n")
	}
}
