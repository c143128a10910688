package kafka

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func TestParseBrokers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		brokers []string
		tls     bool
		err     string
	}{
		{"kafka://a:1,b:2", []string{"a:1", "b:2"}, false, ""},
		{"a:1, b:2", []string{"a:1", "b:2"}, false, ""},
		{"kafka+ssl://a:1", []string{"a:1"}, true, ""},
		{"kafka+tls://[::1]:9092", []string{"[::1]:9092"}, true, ""},
		{"http://a:1", nil, false, `unknown scheme "http"; ` + BrokersAllowed},
		{"a", nil, false, `broker "a" is not host:port; ` + BrokersAllowed},
		{"a:1,", nil, false, `broker "" is not host:port; ` + BrokersAllowed},
		{"a:65536", nil, false, `broker "a:65536" has no valid port; ` + BrokersAllowed},
	}
	for _, tt := range tests {
		brokers, tls, err := ParseBrokers(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseBrokers(%q) error = %v, want %s", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || tls != tt.tls || len(brokers) != len(tt.brokers) {
			t.Errorf("ParseBrokers(%q) = %q, %v, %v; want %q, %v", tt.in, brokers, tls, err, tt.brokers, tt.tls)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := Config{Brokers: []string{"localhost:9092"}}
	with := func(f func(*Config)) Config { c := ok; f(&c); return c }
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no brokers", Config{}, "KAFKA_PRODUCER_URL is not set: give the Kafka brokers, e.g. KAFKA_PRODUCER_URL=kafka://localhost:9092"},
		{"bad broker", with(func(c *Config) { c.Brokers = []string{"a"} }), `KAFKA_PRODUCER_URL: broker "a" is not host:port; ` + BrokersAllowed},
		{"compression", with(func(c *Config) { c.Compression = "brotli" }), `KAFKA_COMPRESSION="brotli": must be none, gzip, snappy, lz4 or zstd`},
		{"linger", with(func(c *Config) { c.Linger = 2 * time.Minute }), `KAFKA_LINGER="2m0s": must be a duration from 0s to 1m, such as 0s, 5ms or 100ms`},
		{"partitions", with(func(c *Config) { c.TopicPartitions = -2 }), `KAFKA_TOPIC_PARTITIONS="-2": must be a positive whole number, or -1 for the broker's default`},
		{"TLS off with a CA file", with(func(c *Config) { c.TLS = ptr(false); c.TLSCAFile = "ca.pem" }),
			"KAFKA_TLS=false contradicts KAFKA_TLS_CA_FILE, which needs TLS: unset KAFKA_TLS or set it to true"},
		{"TLS off with kafka+ssl://", with(func(c *Config) { c.TLS = ptr(false); c.BrokersTLS = true }),
			"KAFKA_TLS=false contradicts KAFKA_PRODUCER_URL's TLS scheme, which needs TLS: unset KAFKA_TLS or set it to true"},
		{"certificate without key", with(func(c *Config) { c.TLSCertFile = "c.pem" }),
			"KAFKA_TLS_CERT_FILE is set but KAFKA_TLS_KEY_FILE is not: a client certificate needs its private key; set both or neither"},
		{"SASL mechanism", with(func(c *Config) { c.SASLMechanism = "GSSAPI" }), `KAFKA_SASL_MECHANISM="GSSAPI": must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`},
		{"SASL without password", with(func(c *Config) { c.SASLMechanism = "scram-sha-256"; c.SASLUsername = "u" }),
			"KAFKA_SASL_PASSWORD is not set: KAFKA_SASL_MECHANISM=SCRAM-SHA-256 needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"},
		{"SASL password without mechanism", with(func(c *Config) { c.SASLPassword = "s3cret" }),
			"KAFKA_SASL_PASSWORD is set but KAFKA_SASL_MECHANISM is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: Validate() = %v, want %s", tt.name, err, tt.want)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate() of %+v = %v, want nil", ok, err)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{Brokers: []string{"a:1"}, SASLMechanism: "plain"}.WithDefaults()
	if c.Compression != "lz4" || c.TopicPartitions != -1 || c.TopicReplicationFactor != -1 || c.CheckInterval != time.Second || c.SASLMechanism != "PLAIN" || *c.TLS {
		t.Errorf("defaults: %+v", c)
	}
	for _, implied := range []Config{{BrokersTLS: true}, {TLSCAFile: "x"}, {TLSServerName: "k"}, {TLSCertFile: "c", TLSKeyFile: "k"}} {
		if !implied.TLSEnabled() {
			t.Errorf("%+v: TLS off, want on", implied)
		}
	}
	if (Config{TLS: ptr(true)}).TLSEnabled() != true {
		t.Error("TLS=true: off")
	}
}

// TestTLSFileErrors gives New certificate files it cannot use, and checks
// that it fails before connecting to anything, naming the setting, the file
// and the reason.
func TestTLSFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile, certDER := writeCert(t, dir, "a")
	_, otherKeyFile, _ := writeCert(t, dir, "b")
	missing := filepath.Join(dir, "missing.pem")
	notPEM := filepath.Join(dir, "ca.der")
	if err := os.WriteFile(notPEM, certDER, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing CA file", Config{TLSCAFile: missing},
			`KAFKA_TLS_CA_FILE="` + missing + `": cannot read the file: no such file or directory`},
		{"CA file is a directory", Config{TLSCAFile: dir},
			`KAFKA_TLS_CA_FILE="` + dir + `": cannot read the file: is a directory`},
		{"CA file not in PEM", Config{TLSCAFile: notPEM},
			`KAFKA_TLS_CA_FILE="` + notPEM + `": holds no PEM certificate; want the CA certificates that sign the brokers' certificates, in PEM`},
		{"missing client certificate", Config{TLSCertFile: missing, TLSKeyFile: keyFile},
			`KAFKA_TLS_CERT_FILE="` + missing + `": cannot read the file: no such file or directory`},
		{"missing key", Config{TLSCertFile: certFile, TLSKeyFile: missing},
			`KAFKA_TLS_KEY_FILE="` + missing + `": cannot read the file: no such file or directory`},
		{"key of another certificate", Config{TLSCertFile: certFile, TLSKeyFile: otherKeyFile},
			`KAFKA_TLS_CERT_FILE="` + certFile + `", KAFKA_TLS_KEY_FILE="` + otherKeyFile + `": tls: private key does not match public key; want a PEM certificate and its unencrypted PEM private key`},
		{"certificate and key swapped", Config{TLSCertFile: keyFile, TLSKeyFile: certFile},
			`KAFKA_TLS_CERT_FILE="` + keyFile + `", KAFKA_TLS_KEY_FILE="` + certFile + `": tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched; want a PEM certificate and its unencrypted PEM private key`},
	}
	for _, tt := range tests {
		// Nothing listens on port 1, and New must not try.
		tt.cfg.Brokers = []string{"127.0.0.1:1"}
		sink, err := New(tt.cfg)
		if err == nil {
			sink.Close()
			t.Errorf("%s: New succeeded, want %s", tt.name, tt.want)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, err, tt.want)
		}
	}
}

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, der []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	for file, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, der
}
