package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The sections of the suite, in the order they run; -only selects some.
const (
	sectionRaw     = "raw"
	sectionDrain   = "drain"
	sectionLatency = "latency"
	sectionWrite   = "write"
	sectionScaling = "scaling"
	// sectionWebhook and sectionRabbitMQ measure those destinations.
	sectionWebhook   = "webhook"
	sectionRabbitMQ  = "rabbitmq"
	sectionPinned    = "pinned"
	sectionPaused    = "paused"
	sectionIsolation = "isolation"
)

var allSections = []string{sectionRaw, sectionDrain, sectionLatency, sectionWrite, sectionScaling, sectionWebhook, sectionRabbitMQ, sectionFormats, sectionPinned, sectionPaused, sectionIsolation, sectionEmit}

// config is the suite's settings, read once from the flags.
type config struct {
	AdminURL    string          `json:"-"` // may hold a password
	Database    string          `json:"database"`
	Sections    []string        `json:"sections"`
	Quick       bool            `json:"quick"`
	ReportPath  string          `json:"report"`
	Events      int             `json:"events"`
	BatchSize   int             `json:"batch_size"`
	Partitions  int             `json:"partitions"`
	ShipperEnv  []string        `json:"shipper_env,omitempty"`
	Timeout     jsonDuration    `json:"timeout"`
	Latency     latencyConfig   `json:"latency"`
	Write       writeConfig     `json:"write_path"`
	Scaling     scalingConfig   `json:"scaling"`
	Webhook     webhookConfig   `json:"webhook"`
	RabbitMQ    rabbitConfig    `json:"rabbitmq"`
	Pinned      pinnedConfig    `json:"pinned"`
	Paused      pausedConfig    `json:"paused"`
	Isolation   isolationConfig `json:"isolation"`
	Compression []string        `json:"compression_codecs"`
	CPUProfile  string          `json:"cpu_profile,omitempty"`

	args     []string        // as given, for the report
	flagsSet map[string]bool // the flags given explicitly, which -quick leaves alone
}

type latencyConfig struct {
	// Rate is the writer's rate of the sections that write at one rate
	// (isolation); Rates those the latency section runs, one after another.
	Rate     int          `json:"rate"`
	Rates    []int        `json:"rates"`
	Duration jsonDuration `json:"duration"`
	Writers  int          `json:"writers"`
	// IdleWindow is how long the latency section measures pg2kafka's CPU
	// with an empty queue, before the first rate's writes.
	IdleWindow jsonDuration `json:"idle_window"`
	// Variants are measured each right after the run with the suite's own
	// settings at each rate, so that a lever's effect is read beside its
	// control within one run.
	Variants []latencyVariant `json:"variants,omitempty"`
}

// latencyVariant is a latency run with pg2kafka settings of its own.
type latencyVariant struct {
	Name string   `json:"name"`
	Env  []string `json:"env"`
}

// parseLatencyVariant reads "NAME KEY=VALUE [KEY=VALUE…]".
func parseLatencyVariant(v string) (latencyVariant, error) {
	f := strings.Fields(v)
	if len(f) < 2 || strings.Contains(f[0], "=") {
		return latencyVariant{}, fmt.Errorf("-latency-variant %q: want a name, then KEY=VALUE settings for pg2kafka, e.g. \"poll5ms POLL_INTERVAL=5ms\"", v)
	}
	for _, kv := range f[1:] {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return latencyVariant{}, fmt.Errorf("-latency-variant %q: %q is not KEY=VALUE", v, kv)
		}
	}
	return latencyVariant{Name: f[0], Env: f[1:]}, nil
}

type writeConfig struct {
	Clients  int          `json:"clients"`
	Duration jsonDuration `json:"duration"`
	Rounds   int          `json:"rounds"`
}

type webhookConfig struct {
	Events          int          `json:"events"`
	LatencyDuration jsonDuration `json:"latency_duration"`
}

type rabbitConfig struct {
	URL    string `json:"-"` // may hold a password
	Events int    `json:"events"`
}

type pinnedConfig struct {
	Events     int          `json:"events"`
	Backlog    int          `json:"backlog"`
	Rate       int          `json:"rate"`
	IdleWindow jsonDuration `json:"idle_window"`
}

type isolationConfig struct {
	Backlogs []int        `json:"paused_backlogs"`
	Drain    int          `json:"drain_events"`
	Bursts   int          `json:"bursts_per_run"`
	Rounds   int          `json:"rounds"`
	Duration jsonDuration `json:"latency_duration"`
}

type pausedConfig struct {
	Paused  int `json:"paused_events"`
	Flowing int `json:"flowing_events"`
}

type scalingConfig struct {
	BatchSizes []int `json:"batch_sizes"`
	EventSizes []int `json:"event_sizes"`
	MaxMB      int   `json:"max_mb_per_run"`
}

// jsonDuration is a time.Duration that reads as "30s" in the JSON report.
type jsonDuration time.Duration

func (d jsonDuration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{args: args}
	var only, batchSizes, eventSizes, codecs, latencyRates string
	var timeout, latencyDuration, latencyIdle, writeDuration, webhookLatency, idleWindow, isolationDuration time.Duration

	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: go run ./script/bench [flags]\n\n"+
			"Benchmarks pg2kafka against the local Postgres and a dev broker it starts itself;\n"+
			"prints a markdown table to stdout and writes a JSON report. Sections: "+strings.Join(allSections, ", ")+".\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.AdminURL, "admin-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "Postgres `URL` of a database from which the benchmark database can be created and dropped")
	fs.StringVar(&cfg.Database, "db", "pg2kafka_bench", "`name` of the database the benchmark creates, uses and drops")
	fs.StringVar(&only, "only", "", "comma-separated `sections` to run (default: all): "+strings.Join(allSections, ","))
	fs.BoolVar(&cfg.Quick, "quick", false, "shrink every size and duration (flags given explicitly still win) so the suite runs in about a minute")
	fs.StringVar(&cfg.ReportPath, "report", "bench-report.json", "`file` to write the JSON report to")
	fs.IntVar(&cfg.Events, "events", 1_000_000, "events queued for the raw drain, the drain and the batch-size scaling runs")
	fs.IntVar(&cfg.BatchSize, "batch", 1000, "batch size of the raw drain and of pg2kafka (BATCH_SIZE)")
	fs.IntVar(&cfg.Partitions, "partitions", 6, "partitions of the dev broker's topics")
	fs.Func("shipper-env", "`KEY=VALUE` setting given to every pg2kafka run, e.g. POLL_INTERVAL=5ms; repeatable", func(v string) error {
		cfg.ShipperEnv = append(cfg.ShipperEnv, v)
		return nil
	})
	fs.DurationVar(&timeout, "timeout", 10*time.Minute, "longest wait for one drain, or for the latency run's records, before giving up")
	fs.IntVar(&cfg.Latency.Rate, "latency-rate", 5000, "commits per second of the isolation section's writer; given without -latency-rates, also the latency section's one rate")
	fs.StringVar(&latencyRates, "latency-rates", "1000,5000", "comma-separated commits per second of the latency section's runs, one after another, each with its breakdown and its -latency-variant runs")
	fs.DurationVar(&latencyDuration, "latency-duration", 30*time.Second, "length of each of the latency section's runs")
	fs.DurationVar(&latencyIdle, "latency-idle-window", 20*time.Second, "how long the latency section measures pg2kafka's CPU with an empty queue, before its first rate's writes")
	fs.IntVar(&cfg.Latency.Writers, "latency-writers", 16, "connections the latency run's writer commits through")
	fs.Func("latency-variant", "`\"NAME KEY=VALUE…\"`: a further latency run at each rate with these pg2kafka settings, right after that rate's run with the suite's own, e.g. \"poll5ms POLL_INTERVAL=5ms\"; repeatable", func(v string) error {
		lv, err := parseLatencyVariant(v)
		if err == nil {
			cfg.Latency.Variants = append(cfg.Latency.Variants, lv)
		}
		return err
	})
	fs.IntVar(&cfg.Write.Clients, "write-clients", 8, "concurrent clients of the write-path runs")
	fs.DurationVar(&writeDuration, "write-duration", 10*time.Second, "length of each write-path run")
	fs.IntVar(&cfg.Write.Rounds, "write-rounds", 3, "rounds of the four write-path runs, interleaved; the median of each is reported")
	fs.StringVar(&batchSizes, "batch-sizes", "500,1000,5000", "comma-separated batch sizes of the scaling section")
	fs.StringVar(&eventSizes, "event-sizes", "200,2048,20480", "comma-separated event sizes in bytes of the scaling section")
	fs.IntVar(&cfg.Scaling.MaxMB, "scale-mb", 200, "most megabytes of event data one event-size scaling run moves (fewer events for bigger ones)")
	fs.IntVar(&cfg.Pinned.Events, "pinned-events", 1_000_000, "events the pinned section ships while a snapshot is held, before measuring")
	fs.IntVar(&cfg.Pinned.Backlog, "pinned-backlog", 200_000, "backlog the pinned section drains in each phase")
	fs.IntVar(&cfg.Pinned.Rate, "pinned-rate", 1000, "commits per second of the pinned section's latency runs, each -latency-duration long")
	fs.DurationVar(&idleWindow, "idle-window", 10*time.Second, "how long the pinned section measures pg2kafka's CPU while it is idle")
	fs.IntVar(&cfg.Paused.Paused, "paused-events", 1_000_000, "events of a paused table queued ahead of the flowing table's in the paused section")
	fs.Func("isolation-backlogs", "comma-separated backlogs of a table whose topic is missing, beside which the isolation section runs the flowing table (default 100000,1000000)", func(v string) error {
		cfg.Isolation.Backlogs = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return fmt.Errorf("%q is not a positive whole number", f)
			}
			cfg.Isolation.Backlogs = append(cfg.Isolation.Backlogs, n)
		}
		return nil
	})
	fs.IntVar(&cfg.Isolation.Drain, "isolation-drain", 100_000, "events of the flowing table in each burst the isolation section drains after a run's latency measurement")
	fs.IntVar(&cfg.Isolation.Bursts, "isolation-bursts", 2, "bursts each isolation run drains, one after another; the run's drain rate is their median")
	fs.IntVar(&cfg.Isolation.Rounds, "isolation-rounds", 3, "rounds of the isolation runs, interleaved (none queued, then each backlog), closed by one more run with none queued; the medians are reported")
	fs.DurationVar(&isolationDuration, "isolation-duration", 10*time.Second, "length of each isolation run's latency measurement, at -latency-rate")
	fs.IntVar(&cfg.Paused.Flowing, "paused-flowing", 200_000, "events of the flowing table the paused section drains past them")
	fs.StringVar(&codecs, "compression-codecs", "none,snappy,lz4,zstd", "codecs to drain with, each a full drain of -events, if pg2kafka has a compression setting")
	fs.IntVar(&cfg.Webhook.Events, "webhook-events", 100_000, "events queued for each of the webhook section's drains (batch 1 and batch 100)")
	fs.DurationVar(&webhookLatency, "webhook-latency-duration", 10*time.Second, "length of the webhook section's run at 1,000 commits/s")
	fs.StringVar(&cfg.RabbitMQ.URL, "rabbitmq-url", "amqp://guest:guest@127.0.0.1:5672/", "`URL` of the RabbitMQ the rabbitmq section publishes to")
	fs.IntVar(&cfg.RabbitMQ.Events, "rabbitmq-events", 100_000, "events queued for the rabbitmq section's drain")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "after the drain section, drain once more through a pg2kafka with a pprof endpoint and write its CPU profile to `file`")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (see -help)", fs.Args())
	}
	cfg.flagsSet = make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { cfg.flagsSet[f.Name] = true })

	if cfg.Quick {
		cfg.quicken(&timeout, &latencyDuration, &latencyIdle, &writeDuration, &webhookLatency, &idleWindow, &isolationDuration)
	}
	if cfg.Isolation.Backlogs == nil {
		cfg.Isolation.Backlogs = []int{100_000, 1_000_000}
	}
	cfg.Pinned.IdleWindow = jsonDuration(idleWindow)
	cfg.Timeout = jsonDuration(timeout)
	cfg.Latency.Duration = jsonDuration(latencyDuration)
	cfg.Latency.IdleWindow = jsonDuration(latencyIdle)
	cfg.Isolation.Duration = jsonDuration(isolationDuration)
	cfg.Write.Duration = jsonDuration(writeDuration)
	cfg.Webhook.LatencyDuration = jsonDuration(webhookLatency)

	var err error
	if cfg.Sections, err = parseSections(only); err != nil {
		return nil, err
	}
	if cfg.Latency.Rates, err = parseInts("-latency-rates", latencyRates); err != nil {
		return nil, err
	}
	if cfg.flagsSet["latency-rate"] && !cfg.flagsSet["latency-rates"] {
		cfg.Latency.Rates = []int{cfg.Latency.Rate}
	}
	if cfg.Scaling.BatchSizes, err = parseInts("-batch-sizes", batchSizes); err != nil {
		return nil, err
	}
	if cfg.Scaling.EventSizes, err = parseInts("-event-sizes", eventSizes); err != nil {
		return nil, err
	}
	cfg.Compression = splitList(codecs)
	return cfg, cfg.validate()
}

// quicken shrinks the settings not given explicitly.
func (c *config) quicken(timeout, latencyDuration, latencyIdle, writeDuration, webhookLatency, idleWindow, isolationDuration *time.Duration) {
	set := func(name string, apply func()) {
		if !c.flagsSet[name] {
			apply()
		}
	}
	set("events", func() { c.Events = 50_000 })
	set("timeout", func() { *timeout = 2 * time.Minute })
	set("latency-duration", func() { *latencyDuration = 5 * time.Second })
	set("latency-idle-window", func() { *latencyIdle = 5 * time.Second })
	set("write-duration", func() { *writeDuration = 5 * time.Second })
	set("write-rounds", func() { c.Write.Rounds = 1 })
	set("scale-mb", func() { c.Scaling.MaxMB = 10 })
	set("webhook-events", func() { c.Webhook.Events = 10_000 })
	set("webhook-latency-duration", func() { *webhookLatency = 5 * time.Second })
	set("rabbitmq-events", func() { c.RabbitMQ.Events = 10_000 })
	set("pinned-events", func() { c.Pinned.Events = 50_000 })
	set("pinned-backlog", func() { c.Pinned.Backlog = 20_000 })
	set("idle-window", func() { *idleWindow = 3 * time.Second })
	set("paused-events", func() { c.Paused.Paused = 100_000 })
	set("paused-flowing", func() { c.Paused.Flowing = 20_000 })
	set("isolation-backlogs", func() { c.Isolation.Backlogs = []int{10_000, 100_000} })
	set("isolation-drain", func() { c.Isolation.Drain = 20_000 })
	set("isolation-bursts", func() { c.Isolation.Bursts = 1 })
	set("isolation-rounds", func() { c.Isolation.Rounds = 1 })
	set("isolation-duration", func() { *isolationDuration = 5 * time.Second })
}

var (
	databaseName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	envName      = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
)

// benchOwnedEnv are the pg2kafka settings the benchmark decides: where
// events go, and so where they are counted.
var benchOwnedEnv = []string{"DATABASE_URL", "KAFKA_PRODUCER_URL", "KAFKA_BROKER", "TOPIC_NAMESPACE", "DRY_RUN", "BATCH_SIZE",
	"WEBHOOK_URL", "WEBHOOK_BATCH_SIZE", "WEBHOOK_CONCURRENCY", "RABBITMQ_URL", "RABBITMQ_EXCHANGE", "STREAM_ONLY"}

func (c *config) validate() error {
	positive := []struct {
		name  string
		value int
	}{
		{"-events", c.Events},
		{"-batch", c.BatchSize},
		{"-partitions", c.Partitions},
		{"-latency-rate", c.Latency.Rate},
		{"-latency-writers", c.Latency.Writers},
		{"-write-clients", c.Write.Clients},
		{"-write-rounds", c.Write.Rounds},
		{"-scale-mb", c.Scaling.MaxMB},
		{"-webhook-events", c.Webhook.Events},
		{"-rabbitmq-events", c.RabbitMQ.Events},
		{"-pinned-events", c.Pinned.Events},
		{"-pinned-backlog", c.Pinned.Backlog},
		{"-pinned-rate", c.Pinned.Rate},
		{"-paused-events", c.Paused.Paused},
		{"-paused-flowing", c.Paused.Flowing},
		{"-isolation-drain", c.Isolation.Drain},
		{"-isolation-bursts", c.Isolation.Bursts},
		{"-isolation-rounds", c.Isolation.Rounds},
	}
	for _, p := range positive {
		if p.value < 1 {
			return fmt.Errorf("%s %d: must be at least 1", p.name, p.value)
		}
	}
	if !databaseName.MatchString(c.Database) {
		// The name also names the topics, so it is kept to what needs no quoting anywhere.
		return fmt.Errorf("-db %q: must be lower-case letters, digits and underscores, not starting with a digit", c.Database)
	}
	if c.Timeout <= 0 || c.Latency.Duration <= 0 || c.Latency.IdleWindow <= 0 || c.Write.Duration <= 0 || c.Pinned.IdleWindow <= 0 || c.Isolation.Duration <= 0 {
		return errors.New("-timeout, -latency-duration, -latency-idle-window, -write-duration, -idle-window and -isolation-duration must be positive")
	}
	if len(c.Latency.Rates) == 0 {
		return errors.New("-latency-rates: name at least one rate")
	}
	for _, kv := range c.ShipperEnv {
		key, _, ok := strings.Cut(kv, "=")
		if !ok || !envName.MatchString(key) {
			return fmt.Errorf("-shipper-env %q: want KEY=VALUE, e.g. POLL_INTERVAL=5ms", kv)
		}
		if slices.Contains(benchOwnedEnv, key) {
			return fmt.Errorf("-shipper-env %q: the benchmark sets %s itself", kv, key)
		}
	}
	return nil
}

// commandLine is the exact command that ran, for the report.
func (c *config) commandLine() string {
	parts := []string{"go", "run", "./script/bench"}
	for _, a := range c.args {
		if strings.ContainsAny(a, " \t\"'$&;|<>*?") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func parseSections(only string) ([]string, error) {
	if only == "" {
		return allSections, nil
	}
	var sections []string
	for _, s := range splitList(only) {
		if !slices.Contains(allSections, s) {
			return nil, fmt.Errorf("-only: unknown section %q; want some of %s", s, strings.Join(allSections, ","))
		}
		sections = append(sections, s)
	}
	// Sections run in their fixed order whatever order -only names them in.
	slices.SortFunc(sections, func(a, b string) int {
		return slices.Index(allSections, a) - slices.Index(allSections, b)
	})
	return slices.Compact(sections), nil
}

func parseInts(name, list string) ([]int, error) {
	var out []int
	for _, s := range splitList(list) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive whole number", name, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// splitList turns "a, b,,c" into [a b c].
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
