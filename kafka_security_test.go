package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// testCA is a throwaway certificate authority, its certificate written to
// a PEM file for KAFKA_TLS_CA_FILE.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pool    *x509.CertPool
	pemFile string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pg2kafka test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ca := &testCA{cert: cert, key: key, pool: pool}
	ca.pemFile = writePEM(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

// issue signs a certificate for the given names (IP addresses or DNS
// names) and usage, and returns it with its PEM certificate and key files.
func (ca *testCA) issue(t *testing.T, usage x509.ExtKeyUsage, names ...string) (cert tls.Certificate, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writePEM(t, "cert.pem", "CERTIFICATE", der)
	keyFile = writePEM(t, "key.pem", "PRIVATE KEY", keyDER)
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}

// writePEM writes one PEM block to a new file of its own.
func writePEM(t *testing.T, name, blockType string, der []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kafkaWorld is a database with a tracked table holding three queued
// events, and a kfake cluster set up by the test.
type kafkaWorld struct {
	t       *testing.T
	pool    *pgxpool.Pool
	url     string
	topic   string
	cluster *kfake.Cluster
	// clientOpts are what a client of the cluster needs besides its
	// address: the test's own TLS and SASL settings, not pg2kafka's.
	clientOpts []kgo.Opt
}

func newKafkaWorld(t *testing.T, clusterOpts []kfake.Opt, clientOpts ...kgo.Opt) *kafkaWorld {
	t.Helper()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products VALUES ('A1', 'Mug'), ('B2', 'Cup')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`UPDATE products SET name = 'Big Mug' WHERE sku = 'A1'`,
	)
	var database string
	if err := pool.QueryRow(context.Background(), `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, clusterOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return &kafkaWorld{t: t, pool: pool, url: url, topic: "pg2kafka." + database + ".products", cluster: cluster, clientOpts: clientOpts}
}

// run runs pg2kafka with env added to the database, the brokers and quick
// polling ("{brokers}" in a value stands for the brokers' addresses), until
// until holds for its logs so far, then stops it and returns its logs. Logging is at debug level, so that a secret would show if it
// were ever logged.
func (w *kafkaWorld) run(env map[string]string, until func(logs string) bool) string {
	w.t.Helper()
	all := map[string]string{
		"DATABASE_URL":           w.url,
		"KAFKA_PRODUCER_URL":     strings.Join(w.cluster.ListenAddrs(), ","),
		"KAFKA_CREATE_TOPICS":    "true",
		"KAFKA_TOPIC_PARTITIONS": "1",
		"POLL_INTERVAL":          "10ms",
		"LOG_LEVEL":              "debug",
	}
	for k, v := range env {
		all[k] = strings.ReplaceAll(v, "{brokers}", all["KAFKA_PRODUCER_URL"])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return all[k] }, stdout, stderr) }()
	defer func() {
		if w.t.Failed() {
			w.t.Logf("pg2kafka stderr:\n%s", stderr)
		}
	}()
	waitFor(w.t, "pg2kafka", func() bool {
		select {
		case err := <-done:
			w.t.Fatalf("pg2kafka stopped by itself: %v", err)
		default:
		}
		return until(stderr.String())
	})
	cancel()
	if err := <-done; err != nil {
		w.t.Fatalf("run: %v", err)
	}
	return stderr.String()
}

func (w *kafkaWorld) queueDrained(string) bool { return queueLength(w.t, w.pool) == 0 }

// createTopic creates the topic of the table's events, with one partition.
func (w *kafkaWorld) createTopic() {
	w.t.Helper()
	client, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(w.cluster.ListenAddrs()...)}, w.clientOpts...)...)
	if err != nil {
		w.t.Fatal(err)
	}
	defer client.Close()
	resp, err := kadm.NewClient(client).CreateTopics(context.Background(), 1, 1, nil, w.topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		w.t.Fatal(err)
	}
}

// record is a record as a consumer sees it.
type record struct {
	Partition int32
	Key       string
	Value     string
}

// expectedRecords returns the records the queued events become, in queue
// order.
func (w *kafkaWorld) expectedRecords() []record {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(), `
		SELECT coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text AS uuid, external_id, statement, data::text, created_at
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	var want []record
	for rows.Next() {
		var id, key, statement, data string
		var at time.Time
		if err := rows.Scan(&id, &key, &statement, &data, &at); err != nil {
			w.t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(data)); err != nil {
			w.t.Fatal(err)
		}
		want = append(want, record{Key: key, Value: `{"uuid":"` + id + `","external_id":"` + key + `","statement":"` + statement +
			`","data":` + compact.String() + `,"created_at":"` + at.UTC().Format(time.RFC3339Nano) + `"}`})
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	if len(want) != 3 {
		w.t.Fatalf("%d events queued, want 3", len(want))
	}
	return want
}

// records reads every record on the topic, in partition and offset order,
// after checking from the end offsets how many there are.
func (w *kafkaWorld) records() []record {
	w.t.Helper()
	client, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(w.cluster.ListenAddrs()...),
		kgo.ConsumeTopics(w.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, w.clientOpts...)...)
	if err != nil {
		w.t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(client).ListEndOffsets(ctx, w.topic)
	if err != nil {
		w.t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			total += o.Offset
		}
	})
	var got []record
	for int64(len(got)) < total {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			w.t.Fatalf("read %d of %d records", len(got), total)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			got = append(got, record{Partition: r.Partition, Key: string(r.Key), Value: string(r.Value)})
		})
	}
	return got
}

// TestKafkaTLSAndSASLShipEvents ships the same three events through each
// way of securing the connection to Kafka, and checks that the records
// arrive exactly as without, and that the password shows nowhere.
func TestKafkaTLSAndSASLShipEvents(t *testing.T) {
	t.Parallel()
	const password = "s3cret-kafka-password"
	ca := newTestCA(t)
	serverCert, _, _ := ca.issue(t, x509.ExtKeyUsageServerAuth, "127.0.0.1")
	namedCert, _, _ := ca.issue(t, x509.ExtKeyUsageServerAuth, "kafka.internal")
	clientCert, clientCertFile, clientKeyFile := ca.issue(t, x509.ExtKeyUsageClientAuth, "pg2kafka")
	trustCA := kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool})

	tests := []struct {
		name       string
		cluster    []kfake.Opt
		client     []kgo.Opt
		env        map[string]string
		wantInLogs string
	}{
		{"TLS with a CA file",
			[]kfake.Opt{kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}})},
			[]kgo.Opt{trustCA},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile},
			"kafka_tls=true"},
		{"TLS with a server name the broker's address does not carry",
			[]kfake.Opt{kfake.TLS(&tls.Config{Certificates: []tls.Certificate{namedCert}})},
			[]kgo.Opt{kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool, ServerName: "kafka.internal"})},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile, "KAFKA_TLS_SERVER_NAME": "kafka.internal"},
			"kafka_tls=true"},
		{"TLS with a client certificate",
			[]kfake.Opt{kfake.TLS(&tls.Config{
				Certificates: []tls.Certificate{serverCert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    ca.pool,
			})},
			[]kgo.Opt{kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{clientCert}})},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile, "KAFKA_TLS_CERT_FILE": clientCertFile, "KAFKA_TLS_KEY_FILE": clientKeyFile},
			"kafka_tls=true"},
		{"SASL PLAIN",
			[]kfake.Opt{kfake.EnableSASL(), kfake.Superuser("PLAIN", "shipper", password)},
			[]kgo.Opt{kgo.SASL(plain.Auth{User: "shipper", Pass: password}.AsMechanism())},
			map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "shipper", "KAFKA_SASL_PASSWORD": password},
			"level=WARN msg=\"KAFKA_SASL_MECHANISM=PLAIN without TLS sends the password to the brokers unencrypted; set KAFKA_TLS=true unless the network is trusted\""},
		{"SASL SCRAM-SHA-256",
			[]kfake.Opt{kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "shipper", password)},
			[]kgo.Opt{kgo.SASL(scram.Auth{User: "shipper", Pass: password}.AsSha256Mechanism())},
			map[string]string{"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "shipper", "KAFKA_SASL_PASSWORD": password},
			"kafka_sasl_mechanism=SCRAM-SHA-256 kafka_sasl_username=shipper"},
		{"SASL SCRAM-SHA-512 over TLS, the mechanism in lower case",
			[]kfake.Opt{
				kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}}),
				kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "shipper", password),
			},
			[]kgo.Opt{trustCA, kgo.SASL(scram.Auth{User: "shipper", Pass: password}.AsSha512Mechanism())},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile, "KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SASL_USERNAME": "shipper", "KAFKA_SASL_PASSWORD": password},
			"kafka_tls=true kafka_sasl_mechanism=SCRAM-SHA-512 kafka_sasl_username=shipper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newKafkaWorld(t, tt.cluster, tt.client...)
			want := w.expectedRecords()
			logs := w.run(tt.env, w.queueDrained)
			// Order is kept per key, not across keys.
			got := w.records()
			byKey := func(a, b record) int { return strings.Compare(a.Key, b.Key) }
			slices.SortStableFunc(got, byKey)
			slices.SortStableFunc(want, byKey)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("records on %s:\n got %q\nwant %q", w.topic, got, want)
			}
			if !strings.Contains(logs, tt.wantInLogs) {
				t.Errorf("logs lack %q:\n%s", tt.wantInLogs, logs)
			}
			if strings.Contains(logs, password) {
				t.Errorf("logs show the SASL password:\n%s", logs)
			}
		})
	}
}

// TestKafkaRefusesPg2kafka has Kafka refuse pg2kafka's credentials or
// pg2kafka refuse Kafka's certificate, and checks that the logs say why at
// once (franz-go logs each failed connection; the batch itself fails only
// at SEND_TIMEOUT), that the events stay queued, that nothing reaches the
// topic, and that the password shows nowhere.
func TestKafkaRefusesPg2kafka(t *testing.T) {
	t.Parallel()
	const password, wrongPassword = "s3cret-kafka-password", "wr0ng-kafka-password"
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	serverCert, _, _ := ca.issue(t, x509.ExtKeyUsageServerAuth, "127.0.0.1")
	clientCert, _, _ := ca.issue(t, x509.ExtKeyUsageClientAuth, "pg2kafka")
	serverTLS := kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}})
	trustCA := kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool})

	tests := []struct {
		name    string
		cluster []kfake.Opt
		client  []kgo.Opt
		env     map[string]string
		// control, if set, is installed on the cluster.
		control func(*kfake.Cluster)
		want    string
	}{
		{"wrong SASL password",
			[]kfake.Opt{kfake.EnableSASL(), kfake.Superuser("PLAIN", "shipper", password)},
			[]kgo.Opt{kgo.SASL(plain.Auth{User: "shipper", Pass: password}.AsMechanism())},
			map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "shipper", "KAFKA_SASL_PASSWORD": wrongPassword},
			refuseLikeKafka("shipper", password),
			"SASL_AUTHENTICATION_FAILED: SASL Authentication failed.: Authentication failed: Invalid username or password"},
		{"broker certificate from another CA",
			[]kfake.Opt{serverTLS}, []kgo.Opt{trustCA},
			map[string]string{"KAFKA_TLS_CA_FILE": otherCA.pemFile},
			nil,
			"x509: certificate signed by unknown authority"},
		{"broker certificate not in the system's roots, TLS asked for by the URL",
			[]kfake.Opt{serverTLS}, []kgo.Opt{trustCA},
			map[string]string{"KAFKA_PRODUCER_URL": "kafka+ssl://{brokers}"},
			nil,
			"x509: certificate signed by unknown authority"},
		{"broker certificate for another name",
			[]kfake.Opt{serverTLS}, []kgo.Opt{trustCA},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile, "KAFKA_TLS_SERVER_NAME": "kafka.internal"},
			nil,
			"x509: certificate is not valid for any names, but wanted to match kafka.internal"},
		{"no client certificate for a broker that requires one",
			[]kfake.Opt{kfake.TLS(&tls.Config{
				Certificates: []tls.Certificate{serverCert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    ca.pool,
			})},
			[]kgo.Opt{kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{clientCert}})},
			map[string]string{"KAFKA_TLS_CA_FILE": ca.pemFile},
			nil,
			"tls: certificate required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newKafkaWorld(t, tt.cluster, tt.client...)
			if tt.control != nil {
				tt.control(w.cluster)
			}
			// The topic exists, and pg2kafka does not create topics, as by
			// default: the refusal comes when it produces.
			w.createTopic()
			tt.env["KAFKA_CREATE_TOPICS"] = "false"
			tt.env["SEND_TIMEOUT"] = "2s"
			queued := w.expectedRecords()
			logs := w.run(tt.env, func(logs string) bool {
				return strings.Contains(logs, "events not shipped; they stay queued")
			})
			if !slices.ContainsFunc(strings.Split(logs, "\n"), func(line string) bool {
				return strings.Contains(line, "component=kafka") && strings.Contains(line, tt.want)
			}) {
				t.Errorf("logs lack a line from Kafka's client saying %q:\n%s", tt.want, logs)
			}
			if still := w.expectedRecords(); !reflect.DeepEqual(still, queued) {
				t.Errorf("queue holds %q, want it as it was: %q", still, queued)
			}
			if got := w.records(); len(got) != 0 {
				t.Errorf("records on %s: %q, want none", w.topic, got)
			}
			for _, secret := range []string{password, wrongPassword} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs show a SASL password:\n%s", logs)
				}
			}
		})
	}
}

// refuseLikeKafka makes the cluster answer a SASL PLAIN authentication with
// credentials other than user's as Kafka does, SASL_AUTHENTICATION_FAILED
// and the broker's reason. kfake would close the connection instead, which
// clients can only report as an unexplained EOF.
func refuseLikeKafka(user, password string) func(*kfake.Cluster) {
	return func(c *kfake.Cluster) {
		c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			r := req.(*kmsg.SASLAuthenticateRequest)
			// PLAIN's message: authorization id, user, password, NUL-separated.
			if parts := bytes.Split(r.SASLAuthBytes, []byte{0}); len(parts) == 3 && string(parts[1]) == user && string(parts[2]) == password {
				return nil, nil, false
			}
			resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
			resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
			resp.ErrorMessage = kmsg.StringPtr("Authentication failed: Invalid username or password")
			return resp, nil, true
		})
	}
}

// TestKafkaTLSFileErrors gives pg2kafka a certificate file it cannot use,
// and checks that it stops at once, before connecting to anything, with
// exit status 2 and one line naming the setting, the file and the reason
// (shipper/kafka's tests go through every such mistake).
func TestKafkaTLSFileErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.pem")
	// Nothing listens on port 1: were pg2kafka to connect to Postgres
	// first, it would wait for it instead of stopping.
	env := map[string]string{"DATABASE_URL": "postgres://app@127.0.0.1:1/shop", "KAFKA_PRODUCER_URL": "127.0.0.1:1", "KAFKA_TLS_CA_FILE": missing}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), nil, configEnv(env), &stdout, &stderr)
	if code := exitCode(err, &stderr); code != 2 {
		t.Errorf("exit code = %d, want 2", code)
	}
	want := `pg2kafka: KAFKA_TLS_CA_FILE="` + missing + `": cannot read the file: no such file or directory` + "\n"
	if got := stderr.String(); got != want {
		t.Errorf("stderr:\n got %q\nwant %q", got, want)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", stdout.String())
	}
}
