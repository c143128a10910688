package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// Config is everything pg2kafka reads from its environment and flags.
type Config struct {
	destinationConfig
	// Kafka is the Kafka settings, checked by its Validate when
	// KAFKA_PRODUCER_URL is the destination.
	Kafka             kafka.Config
	DatabaseURL       string
	TopicNamespace    string
	PerformMigrations bool
	DryRun            bool
	BatchSize         int
	Workers           int
	PollInterval      time.Duration
	SendTimeout       time.Duration
	ShutdownTimeout   time.Duration
	// LaneTakeoverTimeout bounds how long a replica that stopped keeps its
	// lanes. Default 10s.
	LaneTakeoverTimeout time.Duration
	// EventFormat is the shape of every record's value. Default
	// shipper.FormatPg2kafka.
	EventFormat shipper.Format
	// DebeziumTombstones follows each DELETE with a tombstone, with
	// EventFormat debezium. Default false.
	DebeziumTombstones bool
	LogLevel           slog.Level
	LogFormat          string
	// HTTPAddr is where /metrics, /healthz, /readyz, the status page and
	// the live stream are served: host:port, or "off". Default ":8080".
	HTTPAddr string
	// StreamToken is what live stream viewers present; empty keeps the
	// stream off. Default: off.
	StreamToken string

	// httpAddrGiven records that HTTP_ADDR was set rather than defaulted: an
	// address asked for that cannot be had stops pg2kafka, the default
	// taken only warns.
	httpAddrGiven bool
}

// setting is one configuration value: the environment variables it is read
// from (the first set wins), the flag that overrides them, and how its text
// becomes part of Config. parse reports what is allowed when the text is not.
type setting struct {
	env    []string
	flag   string
	def    string
	help   string
	secret bool
	// scope says which commands read the setting; the zero value is ship's
	// alone.
	scope scope
	// boolean settings are flags that may stand alone: -dry-run.
	boolean bool
	parse   func(c *Config, value string) error
}

// coreSettings are the settings of every destination, and Kafka's.
func coreSettings() []setting {
	return []setting{
		{env: []string{"DATABASE_URL"}, flag: "database-url", secret: true, scope: everyCommand,
			help:  "Postgres connection URL (postgres://user:pass@host:5432/db?sslmode=…); the database name names the topics. Required.",
			parse: parseDatabaseURL},
		{env: []string{"KAFKA_PRODUCER_URL", "KAFKA_BROKER"}, flag: "kafka-producer-url",
			help:  "Kafka brokers: kafka://host:port[,host:port…], kafka+ssl://… for TLS, or host:port[,host:port…]. Required unless DRY_RUN=true.",
			parse: parseBrokers},
		{env: []string{"TOPIC_NAMESPACE"}, flag: "topic-namespace",
			help:  "Inserted into every topic name: pg2kafka.<namespace>.<db>.<table>. Default: none.",
			parse: func(c *Config, v string) error { c.TopicNamespace = v; return nil }},
		{env: []string{"PERFORM_MIGRATIONS"}, boolean: true, flag: "perform-migrations", def: "false",
			help:  "Install or upgrade the pg2kafka schema before shipping.",
			parse: boolInto(func(c *Config) *bool { return &c.PerformMigrations })},
		{env: []string{"DRY_RUN"}, boolean: true, flag: "dry-run", def: "false",
			help:  "Write each event to stdout as a JSON line instead of producing it to Kafka; events are still taken off the queue.",
			parse: boolInto(func(c *Config) *bool { return &c.DryRun })},
		{env: []string{"KAFKA_CREATE_TOPICS"}, boolean: true, flag: "kafka-create-topics", def: "false",
			help:  "Create missing topics instead of retrying their events until someone creates them.",
			parse: boolInto(func(c *Config) *bool { return &c.Kafka.CreateTopics })},
		{env: []string{"KAFKA_TOPIC_PARTITIONS"}, flag: "kafka-topic-partitions", def: "-1",
			help: "Partitions of topics pg2kafka creates; -1: the broker's default.",
			parse: func(c *Config, v string) error {
				n, err := strconv.ParseInt(v, 10, 32)
				if err != nil || n == 0 || n < -1 {
					return errors.New("must be a positive whole number, or -1 for the broker's default")
				}
				c.Kafka.TopicPartitions = int32(n)
				return nil
			}},
		{env: []string{"KAFKA_TOPIC_REPLICATION_FACTOR"}, flag: "kafka-topic-replication-factor", def: "-1",
			help: "Replication factor of topics pg2kafka creates; -1: the broker's default.",
			parse: func(c *Config, v string) error {
				n, err := strconv.ParseInt(v, 10, 16)
				if err != nil || n == 0 || n < -1 {
					return errors.New("must be a positive whole number, or -1 for the broker's default")
				}
				c.Kafka.TopicReplicationFactor = int16(n)
				return nil
			}},
		{env: []string{"BATCH_SIZE"}, flag: "batch-size", def: "5000",
			help: "Most events claimed and sent at once (1 to 100000).",
			parse: func(c *Config, v string) error {
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > 100000 {
					return errors.New("must be a whole number from 1 to 100000")
				}
				c.BatchSize = n
				return nil
			}},
		{env: []string{"WORKERS"}, flag: "workers", def: "2",
			help: "Batches in flight at once (1 to 64), each from its own share of the queue's lanes over its own connection. Replicas share the lanes among all their workers.",
			parse: func(c *Config, v string) error {
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > 64 {
					return errors.New("must be a whole number from 1 to 64")
				}
				c.Workers = n
				return nil
			}},
		{env: []string{"KAFKA_COMPRESSION"}, flag: "kafka-compression", def: "lz4",
			help: "Compression of produced batches: none, gzip, snappy, lz4 or zstd.",
			parse: func(c *Config, v string) error {
				if !slices.Contains(kafka.Compressions, v) {
					return errors.New("must be none, gzip, snappy, lz4 or zstd")
				}
				c.Kafka.Compression = v
				return nil
			}},
		{env: []string{"KAFKA_LINGER"}, flag: "kafka-linger", def: "0s",
			help: "No effect, kept so that configurations setting it still start (with a warning): a batch's records are sent together once all are handed to the producer.",
			parse: func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 || d > time.Minute {
					return errors.New("must be a duration from 0s to 1m, such as 0s, 5ms or 100ms")
				}
				c.Kafka.Linger = d
				return nil
			}},
		{env: []string{"KAFKA_TLS"}, boolean: true, flag: "kafka-tls",
			help: "Connect to the brokers with TLS (true or false), trusting the system's CAs unless KAFKA_TLS_CA_FILE is set. Default: true if any KAFKA_TLS_* setting or a kafka+ssl:// KAFKA_PRODUCER_URL asks for TLS, false otherwise.",
			parse: func(c *Config, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return errors.New("must be true or false")
				}
				c.Kafka.TLS = &b
				return nil
			}},
		{env: []string{"KAFKA_TLS_CA_FILE"}, flag: "kafka-tls-ca-file",
			help:  "PEM file of the CAs that sign the brokers' certificates, trusted instead of the system's. Default: none.",
			parse: func(c *Config, v string) error { c.Kafka.TLSCAFile = v; return nil }},
		{env: []string{"KAFKA_TLS_CERT_FILE"}, flag: "kafka-tls-cert-file",
			help:  "PEM client certificate, for brokers that require one; needs KAFKA_TLS_KEY_FILE. Default: none.",
			parse: func(c *Config, v string) error { c.Kafka.TLSCertFile = v; return nil }},
		{env: []string{"KAFKA_TLS_KEY_FILE"}, flag: "kafka-tls-key-file",
			help:  "PEM private key of KAFKA_TLS_CERT_FILE. Default: none.",
			parse: func(c *Config, v string) error { c.Kafka.TLSKeyFile = v; return nil }},
		{env: []string{"KAFKA_TLS_SERVER_NAME"}, flag: "kafka-tls-server-name",
			help:  "Name the brokers' certificates must carry. Default: each broker's host as KAFKA_PRODUCER_URL names it.",
			parse: func(c *Config, v string) error { c.Kafka.TLSServerName = v; return nil }},
		{env: []string{"KAFKA_SASL_MECHANISM"}, flag: "kafka-sasl-mechanism",
			help:  "SASL authentication: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD. Default: none.",
			parse: parseSASLMechanism},
		{env: []string{"KAFKA_SASL_USERNAME"}, flag: "kafka-sasl-username",
			help:  "SASL user name. Default: none.",
			parse: func(c *Config, v string) error { c.Kafka.SASLUsername = v; return nil }},
		{env: []string{"KAFKA_SASL_PASSWORD"}, flag: "kafka-sasl-password", secret: true,
			help:  "SASL password; never shown in errors or logs. Prefer the variable to the flag, which other users can see in ps. Default: none.",
			parse: func(c *Config, v string) error { c.Kafka.SASLPassword = v; return nil }},
		{env: []string{"POLL_INTERVAL"}, flag: "poll-interval", def: "20ms",
			help:  "How often an idle shipper checks for new events: inside Postgres, in one session of its own, which wakes the workers when an event is written. Also the longest a worker waits before claiming again while an event it could find is not yet committed (the wait starts at 1ms and doubles), and between its own looks while that session cannot wait.",
			parse: durationInto(func(c *Config) *time.Duration { return &c.PollInterval })},
		{env: []string{"SEND_TIMEOUT"}, flag: "send-timeout", def: "30s",
			help:  "Longest a batch waits for Kafka's acknowledgements before it is rolled back and retried. It may be longer than LANE_TAKEOVER_TIMEOUT: a worker waiting for Kafka keeps its claim alive.",
			parse: durationInto(func(c *Config) *time.Duration { return &c.SendTimeout })},
		{env: []string{"SHUTDOWN_TIMEOUT"}, flag: "shutdown-timeout", def: "5s",
			help:  "On SIGINT/SIGTERM, how long the batch in flight may still wait for acknowledgements.",
			parse: durationInto(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{env: []string{"LANE_TAKEOVER_TIMEOUT"}, flag: "lane-takeover-timeout", def: "10s",
			help: "Longest the lanes of a replica that stopped (frozen, or cut off from Postgres) stay its own before the other replicas take them over (1s to 1h): Postgres ends the replica's sessions once they have been silent for half of it. A replica that is only idle, backing off or waiting for Kafka keeps them.",
			parse: func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < time.Second || d > time.Hour {
					return errors.New("must be a duration from 1s to 1h, such as 10s or 30s")
				}
				c.LaneTakeoverTimeout = d
				return nil
			}},
		{env: []string{"EVENT_FORMAT"}, flag: "event-format", def: "pg2kafka",
			help: "The shape of every record's value, for every destination: pg2kafka (its own event), debezium (Debezium's PostgreSQL connector, schemaless JSON), hasura (Hasura's event trigger payload), skor, or pgevents. All but pg2kafka need tables set up with full_row => true to describe UPDATEs and DELETEs whole.",
			parse: func(c *Config, v string) error {
				f, err := shipper.ParseFormat(v)
				if err != nil {
					return errors.New("must be one of " + strings.Join(shipper.FormatNames(), ", "))
				}
				c.EventFormat = f
				return nil
			}},
		{env: []string{"DEBEZIUM_TOMBSTONES"}, boolean: true, flag: "debezium-tombstones", def: "false",
			help:  "With EVENT_FORMAT=debezium, follow each DELETE that has a key with a record of the same key and a null value, as Debezium does, for compacted topics.",
			parse: boolInto(func(c *Config) *bool { return &c.DebeziumTombstones })},
		{env: []string{"HTTP_ADDR"}, flag: "http-addr", def: ":8080",
			help:  "Where /metrics, /healthz, /readyz, the status page (/) and the live stream (/ws, /stream) are served: host:port, :port for every interface, or off.",
			parse: parseHTTPAddr},
		{env: []string{"STREAM_TOKEN"}, flag: "stream-token", secret: true,
			help:  "Turns the live stream on: viewers of /ws and /stream present it as \"Authorization: Bearer <token>\" or ?token=<token>. The stream shows row data. Default: none, the stream is off.",
			parse: func(c *Config, v string) error { c.StreamToken = v; return nil }},
		{env: []string{"LOG_LEVEL"}, flag: "log-level", def: "info", scope: everyCommand,
			help: "debug, info, warn or error.",
			parse: func(c *Config, v string) error {
				if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
					return errors.New("must be debug, info, warn or error")
				}
				return nil
			}},
		{env: []string{"LOG_FORMAT"}, flag: "log-format", def: "text", scope: everyCommand,
			help: "text or json (logs go to stderr).",
			parse: func(c *Config, v string) error {
				if v != "text" && v != "json" {
					return errors.New("must be text or json")
				}
				c.LogFormat = v
				return nil
			}},
	}
}

// errHelp is returned when -help was asked for: usage was printed, and
// nothing is wrong.
var errHelp = errors.New("help requested")

// configError is a configuration problem, one line long, that exits 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

// parseConfig parses ship's command line: every setting.
func parseConfig(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	return shipCommandLine().parse(args, getenv, usage)
}

// scope says which commands read a setting.
type scope uint8

const (
	// shipOnly settings matter to the shipper alone.
	shipOnly scope = iota
	// everyCommand settings are read by every command that connects to
	// Postgres.
	everyCommand
)

// commandLine is one command's flags: its own, which the command reads
// itself, and those of the settings it uses.
type commandLine struct {
	*flag.FlagSet
	synopsis string // "pg2kafka setup TABLE KEY_COLUMN [flags]"
	about    string // what the command does, for -help
	docs     string // the page of docs/ that tells more
	settings []setting
	// positional holds the arguments that are not flags, in order; flags may
	// come before, between or after them.
	positional []string
	// checkArgs, when set, checks the positional arguments; without it the
	// command takes none.
	checkArgs func(args []string) error
}

// newCommandLine returns the command line of the command name. It reads no
// setting unless told which with uses.
func newCommandLine(name, synopsis, about string) *commandLine {
	full := "pg2kafka " + name
	if name == "ship" {
		full = "pg2kafka" // the default: its -help is pg2kafka's
	}
	fs := flag.NewFlagSet(full, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &commandLine{FlagSet: fs, synopsis: synopsis, about: about}
}

// uses adds the settings of the given scopes to the command line.
func (cl *commandLine) uses(scopes ...scope) *commandLine {
	for _, s := range settings() {
		if slices.Contains(scopes, s.scope) {
			cl.settings = append(cl.settings, s)
		}
	}
	return cl
}

func (cl *commandLine) has(flagName string) bool {
	return slices.ContainsFunc(cl.settings, func(s setting) bool { return s.flag == flagName })
}

// NArg and Arg are the positional arguments, wherever they stood.
func (cl *commandLine) NArg() int        { return len(cl.positional) }
func (cl *commandLine) Arg(i int) string { return cl.positional[i] }

// usageError is a mistake on the command line, pointing at -help.
func (cl *commandLine) usageError(format string, args ...any) error {
	return &configError{fmt.Sprintf(format, args...) + " (see " + cl.Name() + " -help)"}
}

// unexpected reports a positional argument the command does not take.
func (cl *commandLine) unexpected(arg string) error {
	shown := fmt.Sprintf("%q", arg)
	if strings.ContainsAny(arg, "@=") {
		shown = "(not shown: it may hold a password)"
	}
	return cl.usageError("unexpected argument %s: settings are flags or environment variables", shown)
}

// parse reads the environment, then the flags, which win over it. Flags are
// parsed first all the same, so that -help works whatever the environment
// holds.
func (cl *commandLine) parse(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	type assignment struct {
		setting setting
		value   string
	}
	var fromFlags []assignment
	for _, s := range cl.settings {
		record := func(v string) error {
			fromFlags = append(fromFlags, assignment{s, v})
			return nil
		}
		if s.boolean {
			cl.BoolFunc(s.flag, s.help, record)
		} else {
			cl.Func(s.flag, s.help, record)
		}
	}
	for {
		err := cl.FlagSet.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			cl.printUsage(usage)
			return Config{}, errHelp
		}
		if err != nil {
			return Config{}, cl.usageError("%v", err)
		}
		rest := cl.FlagSet.Args()
		if len(rest) == 0 {
			break
		}
		// After "--" everything is an argument.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			cl.positional = append(cl.positional, rest...)
			break
		}
		cl.positional = append(cl.positional, rest[0])
		args = rest[1:]
	}

	if cl.checkArgs != nil {
		if err := cl.checkArgs(cl.positional); err != nil {
			return Config{}, err
		}
	} else if len(cl.positional) > 0 {
		return Config{}, cl.unexpected(cl.positional[0])
	}

	var cfg Config
	given := make(map[string]bool)
	for _, s := range cl.settings {
		if s.def == "" {
			continue
		}
		if err := s.parse(&cfg, s.def); err != nil {
			panic(fmt.Sprintf("default of -%s does not parse: %v", s.flag, err))
		}
	}
	for _, s := range cl.settings {
		for _, name := range s.env {
			v := getenv(name)
			if v == "" {
				continue
			}
			if err := s.parse(&cfg, v); err != nil {
				return cfg, &configError{describe(name, s, v) + ": " + err.Error()}
			}
			given[s.flag] = true
			break
		}
	}
	for _, a := range fromFlags {
		if err := a.setting.parse(&cfg, a.value); err != nil {
			return cfg, &configError{describe("-"+a.setting.flag, a.setting, a.value) + ": " + err.Error()}
		}
		given[a.setting.flag] = true
	}

	if cl.has("database-url") && !given["database-url"] {
		return cfg, &configError{"DATABASE_URL is not set: give the Postgres URL, e.g. DATABASE_URL=postgres://user:pass@localhost:5432/shop"}
	}
	if cl.has("kafka-producer-url") {
		if err := chooseDestination(&cfg, given); err != nil {
			return cfg, err
		}
		if cfg.Destination == destKafka {
			if err := cfg.Kafka.Validate(); err != nil {
				return cfg, &configError{err.Error()}
			}
		}
		if err := checkStream(cfg); err != nil {
			return cfg, err
		}
	}
	if cfg.DebeziumTombstones && cfg.EventFormat != shipper.FormatDebezium {
		return cfg, &configError{fmt.Sprintf("DEBEZIUM_TOMBSTONES=true needs EVENT_FORMAT=debezium, and EVENT_FORMAT is %s: set EVENT_FORMAT=debezium, or unset DEBEZIUM_TOMBSTONES", cfg.EventFormat)}
	}
	// A tombstone is a Kafka record; a webhook or an exchange would get an
	// empty body. A dry run shows it, as "value":null.
	if cfg.DebeziumTombstones && cfg.Destination != destKafka && cfg.Destination != destDryRun {
		return cfg, &configError{fmt.Sprintf("DEBEZIUM_TOMBSTONES=true is for Kafka's compacted topics, and the destination is %s: unset DEBEZIUM_TOMBSTONES", cfg.Destination)}
	}
	cfg.httpAddrGiven = given["http-addr"]
	return cfg, nil
}

// parseHTTPAddr accepts off or host:port, the host optional.
func parseHTTPAddr(c *Config, v string) error {
	if v == "off" {
		c.HTTPAddr = v
		return nil
	}
	_, port, err := net.SplitHostPort(v)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return errors.New("must be host:port, :port (every interface) or off, such as :8080 or 127.0.0.1:9090")
	}
	c.HTTPAddr = v
	return nil
}

// checkStream checks that a pg2kafka whose destination is the live stream
// has a stream to show.
func checkStream(cfg Config) error {
	if cfg.Destination != destStream {
		return nil
	}
	switch {
	case cfg.StreamToken == "":
		return &configError{"STREAM_ONLY=true needs STREAM_TOKEN: without it the stream is off and events would be taken off the queue unseen"}
	case cfg.HTTPAddr == "off":
		return &configError{"STREAM_ONLY=true needs the HTTP listener, where the stream is served: set HTTP_ADDR to an address, not off"}
	}
	return nil
}

func parseSASLMechanism(c *Config, v string) error {
	m := strings.ToUpper(v)
	if !slices.Contains(kafka.SASLMechanisms, m) {
		return errors.New("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	}
	c.Kafka.SASLMechanism = m
	return nil
}

// describe names a setting and its value for an error message. The value of
// a secret setting is left out: a connection string too mangled to parse
// cannot be trusted to have its password found and hidden.
func describe(name string, s setting, value string) string {
	if s.secret {
		return name
	}
	return name + "=" + strconv.Quote(value)
}

// printUsage prints what the command does, its own flags, then the
// settings it reads.
func (cl *commandLine) printUsage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nUsage: %s\n", cl.about, cl.synopsis)
	isSetting := make(map[string]bool)
	for _, s := range cl.settings {
		isSetting[s.flag] = true
	}
	first := true
	cl.VisitAll(func(f *flag.Flag) {
		if isSetting[f.Name] {
			return
		}
		if first {
			fmt.Fprint(w, "\nFlags:\n")
			first = false
		}
		name, help := flag.UnquoteUsage(f)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = " (default " + f.DefValue + ")"
		}
		if name != "" {
			name = " " + name
		}
		fmt.Fprintf(w, "  -%s%s%s\n      %s\n", f.Name, name, def, help)
	})
	if len(cl.settings) > 0 {
		fmt.Fprint(w, "\nSettings, each an environment variable or a flag (a flag wins):\n")
	}
	for _, s := range cl.settings {
		def := ""
		if s.def != "" {
			def = " (default " + s.def + ")"
		}
		fmt.Fprintf(w, "  %s, -%s%s\n      %s\n", strings.Join(s.env, " or "), s.flag, def, s.help)
	}
	if cl.docs != "" {
		fmt.Fprintf(w, "\nMore in %s of github.com/pg2kafka/pg2kafka.\n", cl.docs)
	}
}

func boolInto(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("must be true or false")
		}
		*field(c) = b
		return nil
	}
}

func durationInto(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("must be a positive duration such as 250ms, 5s or 1m")
		}
		*field(c) = d
		return nil
	}
}

func parseDatabaseURL(c *Config, v string) error {
	// pgx's parse errors quote the connection string, so they are not
	// repeated here.
	if _, err := pgx.ParseConfig(v); err != nil || strings.TrimSpace(v) == "" {
		return errors.New("not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)")
	}
	c.DatabaseURL = v
	return nil
}

func parseBrokers(c *Config, v string) error {
	brokers, tls, err := kafka.ParseBrokers(v)
	if err != nil {
		return err
	}
	c.Kafka.Brokers, c.Kafka.BrokersTLS = brokers, tls
	return nil
}

// parseBool is strconv.ParseBool with an error that says what is allowed.
func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.New("must be true or false")
	}
	return b, nil
}
