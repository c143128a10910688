// Package kafka is pg2kafka's Kafka destination: a shipper.Sink producing
// each event as a record with franz-go, an idempotent producer waiting for
// all in-sync replicas, keyed records partitioned by murmur2 exactly as the
// Java client does.
package kafka

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Config is how the sink reaches Kafka and treats its topics. Each field
// names the setting pg2kafka reads it from; errors of Validate name those
// settings too, since that is where a user fixes them.
type Config struct {
	// Brokers are the seed brokers, host:port (KAFKA_PRODUCER_URL, parsed by
	// ParseBrokers). Required.
	Brokers []string
	// BrokersTLS records that the brokers were given with a TLS scheme
	// (kafka+ssl://), which needs TLS. Default false.
	BrokersTLS bool
	// TLS dials the brokers with TLS (KAFKA_TLS). Default nil: on if
	// BrokersTLS or any TLS file or name is set, off otherwise; false
	// together with one of those is a contradiction Validate reports.
	TLS *bool
	// TLSCAFile is a PEM bundle of the CAs trusted to sign the brokers'
	// certificates, instead of the system's (KAFKA_TLS_CA_FILE). Default:
	// the system's roots.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the PEM client certificate and its
	// key, for brokers that require one (KAFKA_TLS_CERT_FILE,
	// KAFKA_TLS_KEY_FILE). Default: none.
	TLSCertFile, TLSKeyFile string
	// TLSServerName is the name expected in the brokers' certificates
	// (KAFKA_TLS_SERVER_NAME). Default: each broker's host as given.
	TLSServerName string
	// SASLMechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, in any case,
	// with SASLUsername and SASLPassword (KAFKA_SASL_MECHANISM,
	// KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD). Default "": no SASL.
	SASLMechanism, SASLUsername, SASLPassword string
	// Compression of produced batches: none, gzip, snappy, lz4 or zstd
	// (KAFKA_COMPRESSION). Default lz4.
	Compression string
	// Linger (KAFKA_LINGER, 0 to 1m) has no effect: the records of a batch
	// are sent together once all are handed to the producer, so there is
	// nothing to wait for. It is accepted, with a warning, so that a
	// configuration setting it still starts.
	Linger time.Duration
	// CreateTopics creates a missing topic before producing to it
	// (KAFKA_CREATE_TOPICS). Default false: a missing topic makes its table
	// wait, its events queued, until someone creates it.
	CreateTopics bool
	// TopicPartitions and TopicReplicationFactor shape the topics the sink
	// creates (KAFKA_TOPIC_PARTITIONS, KAFKA_TOPIC_REPLICATION_FACTOR).
	// Default -1 (0 means the same): the broker's default.
	TopicPartitions        int32
	TopicReplicationFactor int16
	// CheckInterval is how often the sink looks again at topics it found
	// missing or not allowed, and checks that a broker answers. A topic
	// created meanwhile ships within about this long. Default 1s.
	CheckInterval time.Duration
	// Logger receives the sink's own lines: connected to Kafka, or not
	// reachable. Default: discard.
	Logger *slog.Logger
}

// Compressions are the values Config.Compression allows.
var Compressions = []string{"none", "gzip", "snappy", "lz4", "zstd"}

// SASLMechanisms are the values Config.SASLMechanism allows.
var SASLMechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

var compressionCodecs = map[string]kgo.CompressionCodec{
	"none":   kgo.NoCompression(),
	"gzip":   kgo.GzipCompression(),
	"snappy": kgo.SnappyCompression(),
	"lz4":    kgo.Lz4Compression(),
	"zstd":   kgo.ZstdCompression(),
}

// BrokersAllowed says what ParseBrokers accepts.
const BrokersAllowed = "want kafka://host:port[,host:port…] (kafka+ssl:// for TLS) or host:port[,host:port…]"

// ParseBrokers parses a KAFKA_PRODUCER_URL: kafka://host:port[,…],
// kafka+ssl:// or kafka+tls:// for TLS, or a bare host:port list. It reports
// whether the scheme asks for TLS.
func ParseBrokers(v string) (brokers []string, tls bool, err error) {
	list := v
	if scheme, rest, ok := strings.Cut(v, "://"); ok {
		switch scheme {
		case "kafka":
		case "kafka+ssl", "kafka+tls":
			tls = true
		default:
			return nil, false, fmt.Errorf("unknown scheme %q; %s", scheme, BrokersAllowed)
		}
		list = rest
	}
	for _, b := range strings.Split(list, ",") {
		b = strings.TrimSpace(b)
		if err := checkBroker(b); err != nil {
			return nil, false, err
		}
		brokers = append(brokers, b)
	}
	return brokers, tls, nil
}

func checkBroker(b string) error {
	host, port, err := net.SplitHostPort(b)
	if err != nil || host == "" {
		return fmt.Errorf("broker %q is not host:port; %s", b, BrokersAllowed)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("broker %q has no valid port; %s", b, BrokersAllowed)
	}
	return nil
}

// WithDefaults returns c with its defaults filled in and TLS decided.
func (c Config) WithDefaults() Config {
	if c.Compression == "" {
		c.Compression = "lz4"
	}
	if c.TopicPartitions == 0 {
		c.TopicPartitions = -1
	}
	if c.TopicReplicationFactor == 0 {
		c.TopicReplicationFactor = -1
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.SASLMechanism = strings.ToUpper(c.SASLMechanism)
	if c.TLS == nil {
		on := c.tlsImpliedBy() != ""
		c.TLS = &on
	}
	return c
}

// TLSEnabled reports whether the sink dials the brokers with TLS, given
// its settings.
func (c Config) TLSEnabled() bool { return *c.WithDefaults().TLS }

// tlsImpliedBy names the first setting that asks for TLS, or "".
func (c Config) tlsImpliedBy() string {
	switch {
	case c.BrokersTLS:
		return "KAFKA_PRODUCER_URL's TLS scheme"
	case c.TLSCAFile != "":
		return "KAFKA_TLS_CA_FILE"
	case c.TLSCertFile != "":
		return "KAFKA_TLS_CERT_FILE"
	case c.TLSKeyFile != "":
		return "KAFKA_TLS_KEY_FILE"
	case c.TLSServerName != "":
		return "KAFKA_TLS_SERVER_NAME"
	}
	return ""
}

// Validate reports the first setting that is wrong, naming it, its value
// (never a password's) and what is allowed. Whether the TLS files can be
// used is found out by New, which reads them.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("KAFKA_PRODUCER_URL is not set: give the Kafka brokers, e.g. KAFKA_PRODUCER_URL=kafka://localhost:9092")
	}
	for _, b := range c.Brokers {
		if err := checkBroker(b); err != nil {
			return fmt.Errorf("KAFKA_PRODUCER_URL: %w", err)
		}
	}
	if c.Compression != "" {
		if _, ok := compressionCodecs[c.Compression]; !ok {
			return fmt.Errorf("KAFKA_COMPRESSION=%q: must be none, gzip, snappy, lz4 or zstd", c.Compression)
		}
	}
	if c.Linger < 0 || c.Linger > time.Minute {
		return fmt.Errorf("KAFKA_LINGER=%q: must be a duration from 0s to 1m, such as 0s, 5ms or 100ms", c.Linger)
	}
	if c.TopicPartitions < -1 {
		return fmt.Errorf("KAFKA_TOPIC_PARTITIONS=\"%d\": must be a positive whole number, or -1 for the broker's default", c.TopicPartitions)
	}
	if c.TopicReplicationFactor < -1 {
		return fmt.Errorf("KAFKA_TOPIC_REPLICATION_FACTOR=\"%d\": must be a positive whole number, or -1 for the broker's default", c.TopicReplicationFactor)
	}
	if implied := c.tlsImpliedBy(); implied != "" && c.TLS != nil && !*c.TLS {
		return errors.New("KAFKA_TLS=false contradicts " + implied + ", which needs TLS: unset KAFKA_TLS or set it to true")
	}
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		return errors.New("KAFKA_TLS_CERT_FILE is set but KAFKA_TLS_KEY_FILE is not: a client certificate needs its private key; set both or neither")
	case c.TLSKeyFile != "" && c.TLSCertFile == "":
		return errors.New("KAFKA_TLS_KEY_FILE is set but KAFKA_TLS_CERT_FILE is not: a private key needs its client certificate; set both or neither")
	}
	mechanism := strings.ToUpper(c.SASLMechanism)
	if mechanism != "" && !slices.Contains(SASLMechanisms, mechanism) {
		return fmt.Errorf("KAFKA_SASL_MECHANISM=%q: must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASLMechanism)
	}
	credentials := []struct{ name, value string }{
		{"KAFKA_SASL_USERNAME", c.SASLUsername},
		{"KAFKA_SASL_PASSWORD", c.SASLPassword},
	}
	for _, s := range credentials {
		switch {
		case mechanism == "" && s.value != "":
			return errors.New(s.name + " is set but KAFKA_SASL_MECHANISM is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
		case mechanism != "" && s.value == "":
			return errors.New(s.name + " is not set: KAFKA_SASL_MECHANISM=" + mechanism + " needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
		}
	}
	if c.CheckInterval < 0 {
		return fmt.Errorf("kafka: CheckInterval %v: must be positive, or 0 for the default 1s", c.CheckInterval)
	}
	return nil
}

// clientOpts returns the franz-go options for c, reading the certificate
// files: pg2kafka's defaults, the brokers, compression, linger, TLS and
// SASL. c has its defaults.
func (c Config) clientOpts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.RecordPartitioner(newPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(compressionCodecs[c.Compression]),
		// A topic the sink looked up and found is produced to at once; one
		// that vanishes later fails its records at the first metadata
		// answer saying so, rather than after four more, seconds apart,
		// while a claim waits.
		kgo.UnknownTopicRetries(0),
	}
	if *c.TLS {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
		if c.TLSCAFile != "" {
			pem, err := readSettingFile("KAFKA_TLS_CA_FILE", c.TLSCAFile)
			if err != nil {
				return nil, err
			}
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("KAFKA_TLS_CA_FILE=%q: holds no PEM certificate; want the CA certificates that sign the brokers' certificates, in PEM", c.TLSCAFile)
			}
		}
		if c.TLSCertFile != "" {
			certPEM, err := readSettingFile("KAFKA_TLS_CERT_FILE", c.TLSCertFile)
			if err != nil {
				return nil, err
			}
			keyPEM, err := readSettingFile("KAFKA_TLS_KEY_FILE", c.TLSKeyFile)
			if err != nil {
				return nil, err
			}
			// crypto/tls's messages name what is wrong, never the key.
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, fmt.Errorf("KAFKA_TLS_CERT_FILE=%q, KAFKA_TLS_KEY_FILE=%q: %v; want a PEM certificate and its unencrypted PEM private key", c.TLSCertFile, c.TLSKeyFile, err)
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	user, pass := c.SASLUsername, c.SASLPassword
	switch c.SASLMechanism {
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	}
	return opts, nil
}

// newPartitioner returns the partitioner the sink produces with: murmur2
// of the key, as the Java client does, so that pg2kafka and Java producers
// put a key in the same partition.
func newPartitioner() kgo.Partitioner { return kgo.StickyKeyPartitioner(nil) }

// readSettingFile reads the file a setting names; the error names both, and
// why the file cannot be read.
func readSettingFile(setting, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err
		}
		return nil, fmt.Errorf("%s=%q: cannot read the file: %v", setting, path, err)
	}
	return b, nil
}

// Check is Validate, and then reads the TLS files c names, reporting the
// first that cannot be used, as New would; it connects to nothing.
func (c Config) Check() error {
	if err := c.Validate(); err != nil {
		return err
	}
	_, err := c.WithDefaults().clientOpts()
	return err
}
