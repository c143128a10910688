package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

// configEnv is an environment holding only vars.
func configEnv(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

const (
	testDatabaseURL = "postgres://u@localhost:5432/shop"
	brokersAllowed  = kafka.BrokersAllowed
	durationAllowed = "must be a positive duration such as 250ms, 5s or 1m"
	countAllowed    = "must be a positive whole number, or -1 for the broker's default"
	noDestination   = "no destination is set: give one of KAFKA_PRODUCER_URL (e.g. kafka://localhost:9092), WEBHOOK_URL (e.g. https://example.com/hooks/{table}), RABBITMQ_URL (e.g. amqp://guest:guest@localhost:5672/), or set DRY_RUN=true to print events instead"
)

// defaultConfig is what parseConfig gives when only the required settings
// are set.
func defaultConfig() Config {
	return Config{
		DatabaseURL: testDatabaseURL,
		Kafka: kafka.Config{
			Brokers:                []string{"localhost:9092"},
			TopicPartitions:        -1,
			TopicReplicationFactor: -1,
			Compression:            "lz4",
		},
		BatchSize:           5000,
		Workers:             2,
		PollInterval:        20 * time.Millisecond,
		SendTimeout:         30 * time.Second,
		ShutdownTimeout:     5 * time.Second,
		LaneTakeoverTimeout: 10 * time.Second,
		LogLevel:            slog.LevelInfo,
		LogFormat:           "text",
		HTTPAddr:            ":8080",
		destinationConfig: destinationConfig{
			Destination: destKafka,
			Webhook:     webhook.Config{Timeout: 10 * time.Second, BatchSize: 1, Concurrency: 16},
		},
	}
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	required := map[string]string{"DATABASE_URL": testDatabaseURL, "KAFKA_PRODUCER_URL": "localhost:9092"}
	with := func(vars map[string]string) map[string]string {
		all := map[string]string{}
		for k, v := range required {
			all[k] = v
		}
		for k, v := range vars {
			all[k] = v
		}
		return all
	}

	tests := []struct {
		name string
		env  map[string]string
		args []string
		want func(*Config)
	}{
		{"defaults", required, nil, func(*Config) {}},
		{"kafka URL", with(map[string]string{"KAFKA_PRODUCER_URL": "kafka://a:1,b:2"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1", "b:2"} }},
		{"bare broker list", with(map[string]string{"KAFKA_PRODUCER_URL": "a:1,b:2"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1", "b:2"} }},
		{"spaces around brokers", with(map[string]string{"KAFKA_PRODUCER_URL": "kafka://a:1, b:2"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1", "b:2"} }},
		{"IPv6 broker", with(map[string]string{"KAFKA_PRODUCER_URL": "[::1]:9092"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"[::1]:9092"} }},
		{"KAFKA_BROKER alias", map[string]string{"DATABASE_URL": testDatabaseURL, "KAFKA_BROKER": "kafka://b:1"}, nil,
			func(c *Config) { c.Kafka.Brokers = []string{"b:1"} }},
		{"KAFKA_PRODUCER_URL wins over KAFKA_BROKER",
			with(map[string]string{"KAFKA_PRODUCER_URL": "p:1", "KAFKA_BROKER": "b:1"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"p:1"} }},
		{"a bad KAFKA_BROKER is not read when KAFKA_PRODUCER_URL is set",
			with(map[string]string{"KAFKA_PRODUCER_URL": "p:1", "KAFKA_BROKER": "nonsense"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"p:1"} }},
		{"HTTP_ADDR", with(map[string]string{"HTTP_ADDR": "127.0.0.1:9090"}), nil,
			func(c *Config) { c.HTTPAddr = "127.0.0.1:9090"; c.httpAddrGiven = true }},
		{"HTTP_ADDR off", with(map[string]string{"HTTP_ADDR": "off"}), nil,
			func(c *Config) { c.HTTPAddr = "off"; c.httpAddrGiven = true }},
		{"the stream", with(map[string]string{"STREAM_TOKEN": "t0ken"}), nil,
			func(c *Config) { c.StreamToken = "t0ken" }},
		{"dry run needs no brokers", map[string]string{"DATABASE_URL": testDatabaseURL, "DRY_RUN": "true"}, nil,
			func(c *Config) { c.Kafka.Brokers = nil; c.DryRun = true }},
		{"a boolean flag stands alone", map[string]string{"DATABASE_URL": testDatabaseURL}, []string{"-dry-run", "-batch-size=5", "-perform-migrations=false"},
			func(c *Config) { c.Kafka.Brokers = nil; c.DryRun = true; c.BatchSize = 5 }},
		{"empty variables are unset", with(map[string]string{"BATCH_SIZE": "", "LOG_FORMAT": ""}), nil,
			func(*Config) {}},
		{"every variable", map[string]string{
			"DATABASE_URL":                   "host=db user=u password=p dbname=shop",
			"KAFKA_PRODUCER_URL":             "kafka://k1:9092,k2:9093",
			"TOPIC_NAMESPACE":                "staging",
			"PERFORM_MIGRATIONS":             "true",
			"DRY_RUN":                        "false",
			"KAFKA_CREATE_TOPICS":            "1",
			"KAFKA_TOPIC_PARTITIONS":         "12",
			"KAFKA_TOPIC_REPLICATION_FACTOR": "3",
			"BATCH_SIZE":                     "100000",
			"WORKERS":                        "8",
			"KAFKA_COMPRESSION":              "zstd",
			"KAFKA_LINGER":                   "5ms",
			"KAFKA_TLS":                      "true",
			"KAFKA_TLS_CA_FILE":              "ca.pem",
			"KAFKA_TLS_CERT_FILE":            "cert.pem",
			"KAFKA_TLS_KEY_FILE":             "key.pem",
			"KAFKA_TLS_SERVER_NAME":          "kafka.internal",
			"KAFKA_SASL_MECHANISM":           "SCRAM-SHA-512",
			"KAFKA_SASL_USERNAME":            "shipper",
			"KAFKA_SASL_PASSWORD":            "s3cret",
			"POLL_INTERVAL":                  "250ms",
			"SEND_TIMEOUT":                   "1m",
			"SHUTDOWN_TIMEOUT":               "2s",
			"LANE_TAKEOVER_TIMEOUT":          "30s",
			"EVENT_FORMAT":                   "Debezium",
			"DEBEZIUM_TOMBSTONES":            "true",
			"LOG_LEVEL":                      "debug",
			"LOG_FORMAT":                     "json",
			"HTTP_ADDR":                      "127.0.0.1:9090",
			"STREAM_TOKEN":                   "t0ken",
		}, nil, func(c *Config) {
			*c = Config{
				DatabaseURL: "host=db user=u password=p dbname=shop",
				Kafka: kafka.Config{
					Brokers:                []string{"k1:9092", "k2:9093"},
					CreateTopics:           true,
					TopicPartitions:        12,
					TopicReplicationFactor: 3,
					Compression:            "zstd",
					Linger:                 5 * time.Millisecond,
					TLS:                    ptr(true),
					TLSCAFile:              "ca.pem",
					TLSCertFile:            "cert.pem",
					TLSKeyFile:             "key.pem",
					TLSServerName:          "kafka.internal",
					SASLMechanism:          "SCRAM-SHA-512",
					SASLUsername:           "shipper",
					SASLPassword:           "s3cret",
				},
				TopicNamespace:      "staging",
				PerformMigrations:   true,
				BatchSize:           100000,
				Workers:             8,
				PollInterval:        250 * time.Millisecond,
				SendTimeout:         time.Minute,
				ShutdownTimeout:     2 * time.Second,
				LaneTakeoverTimeout: 30 * time.Second,
				EventFormat:         shipper.FormatDebezium,
				DebeziumTombstones:  true,
				LogLevel:            slog.LevelDebug,
				destinationConfig:   defaultConfig().destinationConfig,
				LogFormat:           "json",
				HTTPAddr:            "127.0.0.1:9090",
				StreamToken:         "t0ken",
				httpAddrGiven:       true,
			}
		}},
		{"flags win over the environment",
			with(map[string]string{"BATCH_SIZE": "5", "LOG_LEVEL": "error", "KAFKA_BROKER": "b:1"}),
			[]string{"-batch-size=7", "-log-level", "warn", "-kafka-producer-url=f:1", "-database-url=postgres://f@h/other"},
			func(c *Config) {
				c.BatchSize = 7
				c.LogLevel = slog.LevelWarn
				c.Kafka.Brokers = []string{"f:1"}
				c.DatabaseURL = "postgres://f@h/other"
			}},
		{"KAFKA_TLS", with(map[string]string{"KAFKA_TLS": "true"}), nil,
			func(c *Config) { c.Kafka.TLS = ptr(true) }},
		{"kafka+ssl:// asks for TLS", with(map[string]string{"KAFKA_PRODUCER_URL": "kafka+ssl://a:1,b:2"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1", "b:2"}; c.Kafka.BrokersTLS = true }},
		{"kafka+tls:// asks for TLS", with(map[string]string{"KAFKA_PRODUCER_URL": "kafka+tls://a:1"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1"}; c.Kafka.BrokersTLS = true }},
		{"kafka+ssl:// with KAFKA_TLS=true", with(map[string]string{"KAFKA_PRODUCER_URL": "kafka+ssl://a:1", "KAFKA_TLS": "true"}), nil,
			func(c *Config) { c.Kafka.Brokers = []string{"a:1"}; c.Kafka.BrokersTLS = true; c.Kafka.TLS = ptr(true) }},
		{"a kafka:// flag overrides a kafka+ssl:// variable, TLS with it",
			with(map[string]string{"KAFKA_PRODUCER_URL": "kafka+ssl://a:1"}), []string{"-kafka-producer-url=kafka://b:2"},
			func(c *Config) { c.Kafka.Brokers = []string{"b:2"} }},
		{"a CA file turns TLS on", with(map[string]string{"KAFKA_TLS_CA_FILE": "/etc/kafka/ca.pem"}), nil,
			func(c *Config) { c.Kafka.TLSCAFile = "/etc/kafka/ca.pem" }},
		{"a client certificate turns TLS on",
			with(map[string]string{"KAFKA_TLS_CERT_FILE": "client.pem", "KAFKA_TLS_KEY_FILE": "client-key.pem"}), nil,
			func(c *Config) {
				c.Kafka.TLSCertFile = "client.pem"
				c.Kafka.TLSKeyFile = "client-key.pem"
			}},
		{"a server name turns TLS on", with(map[string]string{"KAFKA_TLS_SERVER_NAME": "kafka.internal"}), nil,
			func(c *Config) { c.Kafka.TLSServerName = "kafka.internal" }},
		{"SASL mechanism in any case", with(map[string]string{
			"KAFKA_SASL_MECHANISM": "scram-sha-256", "KAFKA_SASL_USERNAME": "shipper", "KAFKA_SASL_PASSWORD": "s3cret"}), nil,
			func(c *Config) {
				c.Kafka.SASLMechanism = "SCRAM-SHA-256"
				c.Kafka.SASLUsername = "shipper"
				c.Kafka.SASLPassword = "s3cret"
			}},
		{"SASL by flags", with(nil),
			[]string{"-kafka-sasl-mechanism=PLAIN", "-kafka-sasl-username=shipper", "-kafka-sasl-password=s3cret"},
			func(c *Config) {
				c.Kafka.SASLMechanism = "PLAIN"
				c.Kafka.SASLUsername = "shipper"
				c.Kafka.SASLPassword = "s3cret"
			}},
		{"dry run takes Kafka settings without reading their files",
			map[string]string{"DATABASE_URL": testDatabaseURL, "DRY_RUN": "true", "KAFKA_TLS_CA_FILE": "/nonexistent"}, nil,
			func(c *Config) {
				c.Kafka.Brokers = nil
				c.DryRun = true
				c.Kafka.TLSCAFile = "/nonexistent"
			}},
		{"flags alone", nil,
			[]string{"-database-url", testDatabaseURL, "-dry-run=true", "-topic-namespace=ns"},
			func(c *Config) { c.Kafka.Brokers = nil; c.DryRun = true; c.TopicNamespace = "ns" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var usage bytes.Buffer
			got, err := parseConfig(tt.args, configEnv(tt.env), &usage)
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			want := defaultConfig()
			tt.want(&want)
			if want.DryRun {
				want.Destination = destDryRun
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config:\n got %+v\nwant %+v", got, want)
			}
			if usage.Len() != 0 {
				t.Errorf("usage printed: %q", usage.String())
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	t.Parallel()
	required := map[string]string{"DATABASE_URL": testDatabaseURL, "KAFKA_PRODUCER_URL": "localhost:9092"}
	tests := []struct {
		name string
		env  map[string]string // added to required; "" unsets
		args []string
		want string
	}{
		{"missing DATABASE_URL", map[string]string{"DATABASE_URL": ""}, nil,
			"DATABASE_URL is not set: give the Postgres URL, e.g. DATABASE_URL=postgres://user:pass@localhost:5432/shop"},
		{"missing KAFKA_PRODUCER_URL", map[string]string{"KAFKA_PRODUCER_URL": ""}, nil, noDestination},
		{"missing KAFKA_PRODUCER_URL with DRY_RUN=false", map[string]string{"KAFKA_PRODUCER_URL": "", "DRY_RUN": "false"}, nil, noDestination},

		{"HTTP_ADDR without a port", map[string]string{"HTTP_ADDR": "localhost"}, nil,
			`HTTP_ADDR="localhost": must be host:port, :port (every interface) or off, such as :8080 or 127.0.0.1:9090`},
		{"HTTP_ADDR with a bad port", map[string]string{"HTTP_ADDR": ":http"}, nil,
			`HTTP_ADDR=":http": must be host:port, :port (every interface) or off, such as :8080 or 127.0.0.1:9090`},
		{"STREAM_ONLY without a token", map[string]string{"KAFKA_PRODUCER_URL": "", "STREAM_ONLY": "true"}, nil,
			"STREAM_ONLY=true needs STREAM_TOKEN: without it the stream is off and events would be taken off the queue unseen"},
		{"STREAM_ONLY without the listener", map[string]string{"KAFKA_PRODUCER_URL": "", "STREAM_ONLY": "true", "STREAM_TOKEN": "t", "HTTP_ADDR": "off"}, nil,
			"STREAM_ONLY=true needs the HTTP listener, where the stream is served: set HTTP_ADDR to an address, not off"},

		{"database URL with bad port", map[string]string{"DATABASE_URL": "postgres://u:s3cret@h:notaport/db"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"database URL with bad sslmode", map[string]string{"DATABASE_URL": "postgresql://u:s3cret@h/db?sslmode=bogus"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"database URL with password in the query", map[string]string{"DATABASE_URL": "postgres://u@h/db?password=s3cret&sslmode=bogus"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"key=value with bad port", map[string]string{"DATABASE_URL": "host=h password=s3cret port=notaport"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"key=value with quoted password", map[string]string{"DATABASE_URL": "host=h password='s3cret and more' sslmode=bogus"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"key=value with unterminated quote", map[string]string{"DATABASE_URL": "host=h password='s3cret"}, nil,
			`DATABASE_URL: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"database URL flag", nil, []string{"-database-url=postgres://u:s3cret@h:notaport/db"},
			`-database-url: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},

		{"unknown scheme", map[string]string{"KAFKA_PRODUCER_URL": "http://a:1"}, nil,
			`KAFKA_PRODUCER_URL="http://a:1": unknown scheme "http"; ` + brokersAllowed},
		{"SASL_SSL is not a scheme", map[string]string{"KAFKA_PRODUCER_URL": "SASL_SSL://a:1"}, nil,
			`KAFKA_PRODUCER_URL="SASL_SSL://a:1": unknown scheme "SASL_SSL"; ` + brokersAllowed},
		{"broker without port", map[string]string{"KAFKA_PRODUCER_URL": "kafka://a"}, nil,
			`KAFKA_PRODUCER_URL="kafka://a": broker "a" is not host:port; ` + brokersAllowed},
		{"broker without host", map[string]string{"KAFKA_PRODUCER_URL": ":9092"}, nil,
			`KAFKA_PRODUCER_URL=":9092": broker ":9092" is not host:port; ` + brokersAllowed},
		{"empty broker", map[string]string{"KAFKA_PRODUCER_URL": "a:1,"}, nil,
			`KAFKA_PRODUCER_URL="a:1,": broker "" is not host:port; ` + brokersAllowed},
		{"no brokers after scheme", map[string]string{"KAFKA_PRODUCER_URL": "kafka://"}, nil,
			`KAFKA_PRODUCER_URL="kafka://": broker "" is not host:port; ` + brokersAllowed},
		{"port 0", map[string]string{"KAFKA_PRODUCER_URL": "a:0"}, nil,
			`KAFKA_PRODUCER_URL="a:0": broker "a:0" has no valid port; ` + brokersAllowed},
		{"port too big", map[string]string{"KAFKA_PRODUCER_URL": "a:1,b:65536"}, nil,
			`KAFKA_PRODUCER_URL="a:1,b:65536": broker "b:65536" has no valid port; ` + brokersAllowed},
		{"bad KAFKA_BROKER names KAFKA_BROKER", map[string]string{"KAFKA_PRODUCER_URL": "", "KAFKA_BROKER": "a"}, nil,
			`KAFKA_BROKER="a": broker "a" is not host:port; ` + brokersAllowed},
		{"brokers flag", nil, []string{"-kafka-producer-url=a"},
			`-kafka-producer-url="a": broker "a" is not host:port; ` + brokersAllowed},

		{"KAFKA_TLS", map[string]string{"KAFKA_TLS": "ssl"}, nil, `KAFKA_TLS="ssl": must be true or false`},
		{"KAFKA_TLS=false with a CA file", map[string]string{"KAFKA_TLS": "false", "KAFKA_TLS_CA_FILE": "ca.pem"}, nil,
			"KAFKA_TLS=false contradicts KAFKA_TLS_CA_FILE, which needs TLS: unset KAFKA_TLS or set it to true"},
		{"KAFKA_TLS=false with kafka+ssl://", map[string]string{"KAFKA_TLS": "false", "KAFKA_PRODUCER_URL": "kafka+ssl://a:1"}, nil,
			"KAFKA_TLS=false contradicts KAFKA_PRODUCER_URL's TLS scheme, which needs TLS: unset KAFKA_TLS or set it to true"},
		{"-kafka-tls=false with a server name", map[string]string{"KAFKA_TLS_SERVER_NAME": "kafka.internal"}, []string{"-kafka-tls=false"},
			"KAFKA_TLS=false contradicts KAFKA_TLS_SERVER_NAME, which needs TLS: unset KAFKA_TLS or set it to true"},
		{"client certificate without its key", map[string]string{"KAFKA_TLS_CERT_FILE": "client.pem"}, nil,
			"KAFKA_TLS_CERT_FILE is set but KAFKA_TLS_KEY_FILE is not: a client certificate needs its private key; set both or neither"},
		{"key without its client certificate", map[string]string{"KAFKA_TLS_KEY_FILE": "client-key.pem"}, nil,
			"KAFKA_TLS_KEY_FILE is set but KAFKA_TLS_CERT_FILE is not: a private key needs its client certificate; set both or neither"},
		{"unknown SASL mechanism", map[string]string{"KAFKA_SASL_MECHANISM": "GSSAPI"}, nil,
			`KAFKA_SASL_MECHANISM="GSSAPI": must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`},
		{"SASL mechanism without user name", map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_PASSWORD": "s3cret"}, nil,
			"KAFKA_SASL_USERNAME is not set: KAFKA_SASL_MECHANISM=PLAIN needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"},
		{"SASL mechanism without password", map[string]string{"KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SASL_USERNAME": "shipper"}, nil,
			"KAFKA_SASL_PASSWORD is not set: KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"},
		{"SASL user name without mechanism", map[string]string{"KAFKA_SASL_USERNAME": "shipper"}, nil,
			"KAFKA_SASL_USERNAME is set but KAFKA_SASL_MECHANISM is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"},
		{"SASL password without mechanism", map[string]string{"KAFKA_SASL_PASSWORD": "s3cret"}, nil,
			"KAFKA_SASL_PASSWORD is set but KAFKA_SASL_MECHANISM is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"},
		{"SASL password flag without mechanism", nil, []string{"-kafka-sasl-password", "s3cret"},
			"KAFKA_SASL_PASSWORD is set but KAFKA_SASL_MECHANISM is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"},

		{"PERFORM_MIGRATIONS", map[string]string{"PERFORM_MIGRATIONS": "yes"}, nil,
			`PERFORM_MIGRATIONS="yes": must be true or false`},
		{"DRY_RUN", map[string]string{"DRY_RUN": "on"}, nil, `DRY_RUN="on": must be true or false`},
		{"KAFKA_CREATE_TOPICS", map[string]string{"KAFKA_CREATE_TOPICS": "2"}, nil,
			`KAFKA_CREATE_TOPICS="2": must be true or false`},
		{"dry-run flag", nil, []string{"-dry-run=maybe"}, `-dry-run="maybe": must be true or false`},

		{"partitions 0", map[string]string{"KAFKA_TOPIC_PARTITIONS": "0"}, nil,
			`KAFKA_TOPIC_PARTITIONS="0": ` + countAllowed},
		{"partitions -2", map[string]string{"KAFKA_TOPIC_PARTITIONS": "-2"}, nil,
			`KAFKA_TOPIC_PARTITIONS="-2": ` + countAllowed},
		{"partitions beyond int32", map[string]string{"KAFKA_TOPIC_PARTITIONS": "2147483648"}, nil,
			`KAFKA_TOPIC_PARTITIONS="2147483648": ` + countAllowed},
		{"replication factor beyond int16", map[string]string{"KAFKA_TOPIC_REPLICATION_FACTOR": "32768"}, nil,
			`KAFKA_TOPIC_REPLICATION_FACTOR="32768": ` + countAllowed},
		{"replication factor text", map[string]string{"KAFKA_TOPIC_REPLICATION_FACTOR": "three"}, nil,
			`KAFKA_TOPIC_REPLICATION_FACTOR="three": ` + countAllowed},

		{"unknown event format", map[string]string{"EVENT_FORMAT": "avro"}, nil,
			`EVENT_FORMAT="avro": must be one of pg2kafka, debezium, hasura, skor, pgevents`},
		{"tombstones without debezium", map[string]string{"EVENT_FORMAT": "hasura", "DEBEZIUM_TOMBSTONES": "true"}, nil,
			"DEBEZIUM_TOMBSTONES=true needs EVENT_FORMAT=debezium, and EVENT_FORMAT is hasura: set EVENT_FORMAT=debezium, or unset DEBEZIUM_TOMBSTONES"},
		{"tombstones to a webhook", map[string]string{"KAFKA_PRODUCER_URL": "", "WEBHOOK_URL": "https://example.com/hooks", "EVENT_FORMAT": "debezium", "DEBEZIUM_TOMBSTONES": "true"}, nil,
			"DEBEZIUM_TOMBSTONES=true is for Kafka's compacted topics, and the destination is webhook: unset DEBEZIUM_TOMBSTONES"},
		{"batch size 0", map[string]string{"BATCH_SIZE": "0"}, nil,
			`BATCH_SIZE="0": must be a whole number from 1 to 100000`},
		{"batch size too big", map[string]string{"BATCH_SIZE": "100001"}, nil,
			`BATCH_SIZE="100001": must be a whole number from 1 to 100000`},
		{"batch size fraction", map[string]string{"BATCH_SIZE": "1.5"}, nil,
			`BATCH_SIZE="1.5": must be a whole number from 1 to 100000`},
		{"batch-size flag", nil, []string{"-batch-size", "0"},
			`-batch-size="0": must be a whole number from 1 to 100000`},

		{"poll interval without unit", map[string]string{"POLL_INTERVAL": "100"}, nil,
			`POLL_INTERVAL="100": ` + durationAllowed},
		{"send timeout zero", map[string]string{"SEND_TIMEOUT": "0s"}, nil,
			`SEND_TIMEOUT="0s": ` + durationAllowed},
		{"shutdown timeout negative", map[string]string{"SHUTDOWN_TIMEOUT": "-5s"}, nil,
			`SHUTDOWN_TIMEOUT="-5s": ` + durationAllowed},
		{"poll-interval flag", nil, []string{"-poll-interval=soon"},
			`-poll-interval="soon": ` + durationAllowed},
		{"lane takeover timeout too short", map[string]string{"LANE_TAKEOVER_TIMEOUT": "500ms"}, nil,
			`LANE_TAKEOVER_TIMEOUT="500ms": must be a duration from 1s to 1h, such as 10s or 30s`},
		{"lane-takeover-timeout flag too long", nil, []string{"-lane-takeover-timeout=2h"},
			`-lane-takeover-timeout="2h": must be a duration from 1s to 1h, such as 10s or 30s`},

		{"LOG_LEVEL", map[string]string{"LOG_LEVEL": "verbose"}, nil,
			`LOG_LEVEL="verbose": must be debug, info, warn or error`},
		{"LOG_FORMAT", map[string]string{"LOG_FORMAT": "xml"}, nil,
			`LOG_FORMAT="xml": must be text or json`},
		{"value with a newline stays on one line", map[string]string{"LOG_FORMAT": "text\njson"}, nil,
			`LOG_FORMAT="text\njson": must be text or json`},

		{"unknown flag", nil, []string{"-nope"}, "flag provided but not defined: -nope (see pg2kafka -help)"},
		{"flag without value", nil, []string{"-batch-size"}, "flag needs an argument: -batch-size (see pg2kafka -help)"},
		{"argument", nil, []string{"extra"},
			`unexpected argument "extra": settings are flags or environment variables (see pg2kafka -help)`},
		{"argument that may hold a password", nil, []string{"-database-url=", "postgres://u:s3cret@h/db"},
			`unexpected argument (not shown: it may hold a password): settings are flags or environment variables (see pg2kafka -help)`},
		{"empty database URL flag", nil, []string{"-database-url="},
			`-database-url: not a valid Postgres connection string; want postgres://user:pass@host:5432/dbname?sslmode=… or key=value pairs (host=… dbname=…)`},
		{"stray connection string", nil, []string{"-dry-run", "postgres://u:s3cret@h/db"},
			`unexpected argument (not shown: it may hold a password): settings are flags or environment variables (see pg2kafka -help)`},
		{"the first bad variable is reported", map[string]string{"BATCH_SIZE": "0", "LOG_FORMAT": "xml"}, nil,
			`BATCH_SIZE="0": must be a whole number from 1 to 100000`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range required {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			var usage bytes.Buffer
			_, err := parseConfig(tt.args, configEnv(env), &usage)

			var cfgErr *configError
			if !errors.As(err, &cfgErr) {
				t.Fatalf("err = %#v, want a *configError", err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("message:\n got %s\nwant %s", got, tt.want)
			}
			if msg := err.Error(); strings.Contains(msg, "s3cret") || strings.Contains(msg, "\n") {
				t.Errorf("message %q shows a password or spans lines", msg)
			}
			if usage.Len() != 0 {
				t.Errorf("usage printed: %q", usage.String())
			}
		})
	}
}

func TestParseConfigHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"-help", "-h", "--help"} {
		t.Run(arg, func(t *testing.T) {
			t.Parallel()
			var usage bytes.Buffer
			// Help wins over the missing DATABASE_URL.
			_, err := parseConfig([]string{arg}, configEnv(nil), &usage)
			if !errors.Is(err, errHelp) {
				t.Fatalf("err = %v, want errHelp", err)
			}
			if got := usage.String(); !strings.HasPrefix(got, "pg2kafka ships Postgres row changes to Kafka through a transactional outbox.\n\nUsage: pg2kafka [command] [flags]\n") {
				t.Errorf("usage starts %q", got[:min(len(got), 120)])
			}
		})
	}
}

// TestParseConfigHelpListsEverySetting checks that usage lists every
// variable, with its flag and default.
func TestParseConfigHelpListsEverySetting(t *testing.T) {
	t.Parallel()
	var usage bytes.Buffer
	_, err := parseConfig([]string{"-help"}, configEnv(nil), &usage)
	if !errors.Is(err, errHelp) {
		t.Fatalf("err = %v, want errHelp", err)
	}
	want := []string{
		"  DATABASE_URL, -database-url\n",
		"  KAFKA_PRODUCER_URL or KAFKA_BROKER, -kafka-producer-url\n",
		"  TOPIC_NAMESPACE, -topic-namespace\n",
		"  PERFORM_MIGRATIONS, -perform-migrations (default false)\n",
		"  DRY_RUN, -dry-run (default false)\n",
		"  KAFKA_CREATE_TOPICS, -kafka-create-topics (default false)\n",
		"  KAFKA_TOPIC_PARTITIONS, -kafka-topic-partitions (default -1)\n",
		"  KAFKA_TOPIC_REPLICATION_FACTOR, -kafka-topic-replication-factor (default -1)\n",
		"  BATCH_SIZE, -batch-size (default 5000)\n",
		"  WORKERS, -workers (default 2)\n",
		"  KAFKA_COMPRESSION, -kafka-compression (default lz4)\n",
		"  KAFKA_LINGER, -kafka-linger (default 0s)\n",
		"  KAFKA_TLS, -kafka-tls\n",
		"  KAFKA_TLS_CA_FILE, -kafka-tls-ca-file\n",
		"  KAFKA_TLS_CERT_FILE, -kafka-tls-cert-file\n",
		"  KAFKA_TLS_KEY_FILE, -kafka-tls-key-file\n",
		"  KAFKA_TLS_SERVER_NAME, -kafka-tls-server-name\n",
		"  KAFKA_SASL_MECHANISM, -kafka-sasl-mechanism\n",
		"  KAFKA_SASL_USERNAME, -kafka-sasl-username\n",
		"  KAFKA_SASL_PASSWORD, -kafka-sasl-password\n",
		"  POLL_INTERVAL, -poll-interval (default 20ms)\n",
		"  SEND_TIMEOUT, -send-timeout (default 30s)\n",
		"  SHUTDOWN_TIMEOUT, -shutdown-timeout (default 5s)\n",
		"  LANE_TAKEOVER_TIMEOUT, -lane-takeover-timeout (default 10s)\n",
		"  EVENT_FORMAT, -event-format (default pg2kafka)\n",
		"  DEBEZIUM_TOMBSTONES, -debezium-tombstones (default false)\n",
		"  HTTP_ADDR, -http-addr (default :8080)\n",
		"  STREAM_TOKEN, -stream-token\n",
		"  LOG_LEVEL, -log-level (default info)\n",
		"  LOG_FORMAT, -log-format (default text)\n",
		"  WEBHOOK_URL, -webhook-url\n",
		"  WEBHOOK_HEADERS, -webhook-headers\n",
		"  WEBHOOK_SECRET, -webhook-secret\n",
		"  WEBHOOK_TIMEOUT, -webhook-timeout (default 10s)\n",
		"  WEBHOOK_CA_FILE, -webhook-ca-file\n",
		"  WEBHOOK_BATCH_SIZE, -webhook-batch-size (default 1)\n",
		"  WEBHOOK_CONCURRENCY, -webhook-concurrency (default 16)\n",
		"  RABBITMQ_URL, -rabbitmq-url\n",
		"  RABBITMQ_EXCHANGE, -rabbitmq-exchange\n",
		"  RABBITMQ_CREATE_EXCHANGE, -rabbitmq-create-exchange (default false)\n",
		"  STREAM_ONLY, -stream-only (default false)\n",
	}
	for _, line := range want {
		if !strings.Contains(usage.String(), line) {
			t.Errorf("usage lacks %q", line)
		}
	}
	// And nothing is listed that the list above does not know of.
	n := 0
	for line := range strings.Lines(usage.String()) {
		if strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") {
			n++
		}
	}
	if n != len(want) {
		t.Errorf("usage lists %d settings, want %d:\n%s", n, len(want), usage.String())
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	cfgErr := &configError{`BATCH_SIZE="0": must be a whole number from 1 to 100000`}
	tests := []struct {
		name       string
		err        error
		wantCode   int
		wantStderr string
	}{
		{"success", nil, 0, ""},
		{"help", errHelp, 0, ""},
		{"configuration", cfgErr, 2, "pg2kafka: BATCH_SIZE=\"0\": must be a whole number from 1 to 100000\n"},
		{"wrapped configuration", fmt.Errorf("start: %w", cfgErr), 2,
			"pg2kafka: start: BATCH_SIZE=\"0\": must be a whole number from 1 to 100000\n"},
		{"anything else", errors.New("outbox: connect: connection refused"), 1,
			"pg2kafka: outbox: connect: connection refused\n"},
		{"context canceled", context.Canceled, 1, "pg2kafka: context canceled\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			if got := exitCode(tt.err, &stderr); got != tt.wantCode {
				t.Errorf("exitCode = %d, want %d", got, tt.wantCode)
			}
			if got := stderr.String(); got != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
			}
		})
	}
}

// TestRunConfigErrorReportedOnce follows a bad setting from run to the exit
// status, as main does: one line on stderr, nothing on stdout.
func TestRunConfigErrorReportedOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"bad value", []string{"-batch-size=0"}, map[string]string{"DATABASE_URL": "postgres://u:s3cret@h/db", "DRY_RUN": "true"}, 2,
			"", "pg2kafka: -batch-size=\"0\": must be a whole number from 1 to 100000\n"},
		{"nothing set", nil, nil, 2,
			"", "pg2kafka: DATABASE_URL is not set: give the Postgres URL, e.g. DATABASE_URL=postgres://user:pass@localhost:5432/shop\n"},
		{"help", []string{"-help"}, nil, 0, "USAGE", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, configEnv(tt.env), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != tt.wantCode {
				t.Errorf("exit code = %d, want %d", code, tt.wantCode)
			}
			if got := stderr.String(); got != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
			}
			switch got := stdout.String(); {
			case tt.wantStdout == "USAGE":
				if !strings.Contains(got, "Usage: pg2kafka [command] [flags]") {
					t.Errorf("stdout = %q, want the usage", got)
				}
			case got != tt.wantStdout:
				t.Errorf("stdout = %q, want %q", got, tt.wantStdout)
			}
		})
	}
}

// FuzzConfigNeverShowsPassword feeds DATABASE_URL values with a password
// in every place a connection string can hold one, most of them unparseable,
// and checks that no error message repeats it.
func FuzzConfigNeverShowsPassword(f *testing.F) {
	for _, pw := range []string{"s3cret", "p:ss:word", "with space", "pässwörd", "password=hunter2", `quote'"\`, "%2F%40", "000\n"} {
		f.Add(pw, "notaport")
	}
	f.Fuzz(func(t *testing.T, pw, port string) {
		if len(pw) < 4 {
			t.Skip() // too short to tell apart from the text around it
		}
		for _, url := range []string{
			"postgres://user:" + pw + "@host:" + port + "/db",
			"postgres://user@host:" + port + "/db?password=" + pw,
			"host=host port=" + port + " password=" + pw,
			"host=host port=" + port + " password='" + pw + "'",
			"password = " + pw + " port=" + port,
		} {
			env := map[string]string{"DATABASE_URL": url, "DRY_RUN": "true"}
			for _, args := range [][]string{nil, {"-database-url=" + url}, {"-database-url=", url}} {
				_, err := parseConfig(args, func(k string) string { return env[k] }, io.Discard)
				if err != nil && strings.Contains(err.Error(), pw) {
					t.Errorf("DATABASE_URL %q, args %q: error %q shows the password", url, args, err)
				}
			}
		}
	})
}

func ptr[T any](v T) *T { return &v }
