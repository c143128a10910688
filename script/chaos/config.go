package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// The replicas' settings: every replica gets these and nothing from the
// calling shell.
const (
	replicaCount    = 3
	workers         = 2
	batchSize       = 500
	sendTimeout     = 5 * time.Second
	shutdownTimeout = 5 * time.Second
	// laneTakeoverTimeout is shorter than pg2kafka's default so that the
	// freezes, each longer than it, keep the run short.
	laneTakeoverTimeout = 5 * time.Second
)

// Scenario names, in the order they run.
const (
	scenarioKill     = "kill"
	scenarioBroker   = "broker"
	scenarioPostgres = "postgres"
	scenarioSigterm  = "sigterm"
	scenarioFreeze   = "freeze"
)

var allScenarios = []string{scenarioKill, scenarioBroker, scenarioPostgres, scenarioSigterm, scenarioFreeze}

type config struct {
	AdminURL      string
	Database      string
	Scenarios     []string
	Events        int
	Keys          int
	Pad           int
	Kills         int
	Outage        time.Duration
	Terminations  int
	SigtermRounds int
	Freezes       int
	WriterRate    int
	HeavyRate     int
	MaxRSSMiB     int
	Timeout       time.Duration
	Seed          uint64
	Keep          bool
	Quick         bool
}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	var scenarios string
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.AdminURL, "admin-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		"Postgres URL of a role that may create and drop databases, terminate sessions and read data_directory")
	fs.StringVar(&c.Database, "database", "pg2kafka_chaos", "database to create, use and drop")
	fs.StringVar(&scenarios, "scenario", strings.Join(allScenarios, ","), "comma-separated scenarios to run: "+strings.Join(allScenarios, ", "))
	fs.IntVar(&c.Events, "events", 1_000_000, "events queued before each scenario's drain")
	fs.IntVar(&c.Keys, "keys", 10_000, "rows (external IDs) of each scenario's table; -quick makes it 1000")
	fs.IntVar(&c.Pad, "pad", 100, "bytes of padding in each row, carried by its INSERT event")
	fs.IntVar(&c.Kills, "kills", 50, "kill: fewest kill -9s; more events are written until there were this many")
	fs.DurationVar(&c.Outage, "outage", 60*time.Second, "broker: how long the broker stays down")
	fs.IntVar(&c.Terminations, "terminations", 10, "postgres: pg_terminate_backend rounds, 1s apart, before the server restart")
	fs.IntVar(&c.SigtermRounds, "sigterm-rounds", 3, "sigterm: how many times all replicas are stopped with SIGTERM and restarted")
	fs.IntVar(&c.Freezes, "freezes", 10, "freeze: how many times a random replica is stopped with SIGSTOP, for one to two LANE_TAKEOVER_TIMEOUTs, and woken")
	fs.IntVar(&c.WriterRate, "writer-rate", 2000, "events per second a writer adds while faults are injected (kill, broker, postgres, freeze); 0: none")
	fs.IntVar(&c.HeavyRate, "heavy-rate", 20_000, "sigterm: events per second the writer adds meanwhile")
	fs.IntVar(&c.MaxRSSMiB, "max-rss", 512, "broker: most resident memory, in MiB, a replica may use during the outage")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Minute, "bound of every wait: a drain, a catch-up, a read of the topic")
	fs.Uint64Var(&c.Seed, "seed", 0, "random seed for the fault schedule; 0 picks one (printed, to repeat a run)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary directory (binaries, logs, broker data) even when every scenario passes")
	fs.BoolVar(&c.Quick, "quick", false, "a fast check: 50000 events over 1000 keys, 10 kills, a 10s outage, 2 SIGTERM rounds, 4 freezes")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (see -help)", fs.Args())
	}
	if c.Quick {
		set := make(map[string]bool)
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]func(){
			"events":         func() { c.Events = 50_000 },
			"keys":           func() { c.Keys = 1000 },
			"kills":          func() { c.Kills = 10 },
			"outage":         func() { c.Outage = 10 * time.Second },
			"sigterm-rounds": func() { c.SigtermRounds = 2 },
			"freezes":        func() { c.Freezes = 4 },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	for s := range strings.SplitSeq(scenarios, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(allScenarios, s) {
			return nil, fmt.Errorf("-scenario: unknown scenario %q; want a comma-separated list of %s", s, strings.Join(allScenarios, ", "))
		}
		if !slices.Contains(c.Scenarios, s) {
			c.Scenarios = append(c.Scenarios, s)
		}
	}
	// Run them in their usual order, whatever the order given.
	slices.SortFunc(c.Scenarios, func(a, b string) int {
		return slices.Index(allScenarios, a) - slices.Index(allScenarios, b)
	})
	switch {
	case len(c.Scenarios) == 0:
		return nil, errors.New("-scenario: no scenario given")
	case c.Keys < 1:
		return nil, fmt.Errorf("-keys %d: must be at least 1", c.Keys)
	case c.Events < c.Keys:
		return nil, fmt.Errorf("-events %d: must be at least -keys (%d), one INSERT per key", c.Events, c.Keys)
	case c.Pad < 0:
		return nil, fmt.Errorf("-pad %d: must be 0 or more", c.Pad)
	case c.Kills < 0, c.Terminations < 0, c.SigtermRounds < 0, c.Freezes < 0:
		return nil, errors.New("-kills, -terminations, -sigterm-rounds and -freezes must be 0 or more")
	case c.WriterRate < 0 || c.HeavyRate < 0:
		return nil, errors.New("-writer-rate and -heavy-rate must be 0 or more")
	case c.Outage <= 0 || c.Timeout <= 0:
		return nil, errors.New("-outage and -timeout must be positive")
	case c.MaxRSSMiB < 1:
		return nil, fmt.Errorf("-max-rss %d: must be at least 1 (MiB)", c.MaxRSSMiB)
	}
	return c, nil
}
