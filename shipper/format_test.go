package shipper_test

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// formatCase is one statement's record in one format: the value expected,
// with {U}, {C} and {M} standing for the event's uuid, created_at
// (RFC 3339) and created_at in Unix milliseconds, {DB} for the database, {T}
// for the topic and {S} for when it was shipped, in Unix milliseconds.
type formatCase struct {
	statement string
	key       string
	value     string
	// full is the value when the table has full_row, if it differs.
	full string
}

// The events of test_table: a row there before setup() (SNAPSHOT), then
// skor's example row inserted, updated and deleted.
var formatSQL = []string{
	`INSERT INTO test_table VALUES (7, 'abc7')`,
	`INSERT INTO test_table VALUES (1, 'abc1')`,
	`UPDATE test_table SET name = 'abc2' WHERE id = 1`,
	`UPDATE test_table SET name = 'abc2' WHERE id = 1`, // no change, no event
	`DELETE FROM test_table WHERE id = 1`,
}

var formatCases = map[shipper.Format][]formatCase{
	shipper.FormatPg2kafka: {
		{"SNAPSHOT", "7", `{"uuid":"{U}","external_id":"7","statement":"SNAPSHOT","data":{"id":7,"name":"abc7"},"created_at":"{C}"}`, ""},
		{"INSERT", "1", `{"uuid":"{U}","external_id":"1","statement":"INSERT","data":{"id":1,"name":"abc1"},"created_at":"{C}"}`, ""},
		{"UPDATE", "1", `{"uuid":"{U}","external_id":"1","statement":"UPDATE","data":{"name":"abc2"},"created_at":"{C}"}`,
			`{"uuid":"{U}","external_id":"1","statement":"UPDATE","data":{"id":1,"name":"abc2"},"old":{"id":1,"name":"abc1"},"created_at":"{C}"}`},
		{"DELETE", "1", `{"uuid":"{U}","external_id":"1","statement":"DELETE","data":{},"created_at":"{C}"}`,
			`{"uuid":"{U}","external_id":"1","statement":"DELETE","data":{},"old":{"id":1,"name":"abc2"},"created_at":"{C}"}`},
	},
	// Debezium's PostgreSQL connector through JsonConverter with
	// schemas.enable=false.
	shipper.FormatDebezium: {
		{"SNAPSHOT", "7", `{"before":null,"after":{"id":7,"name":"abc7"},"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"true","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"r","ts_ms":{S}}`, ""},
		{"INSERT", "1", `{"before":null,"after":{"id":1,"name":"abc1"},"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"false","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"c","ts_ms":{S}}`, ""},
		{"UPDATE", "1", `{"before":null,"after":{"name":"abc2"},"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"false","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"u","ts_ms":{S}}`,
			`{"before":{"id":1,"name":"abc1"},"after":{"id":1,"name":"abc2"},"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"false","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"u","ts_ms":{S}}`},
		{"DELETE", "1", `{"before":null,"after":null,"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"false","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"d","ts_ms":{S}}`,
			`{"before":{"id":1,"name":"abc2"},"after":null,"source":{"version":"pg2kafka-1.2.3","connector":"postgresql","name":"{DB}","ts_ms":{M},"snapshot":"false","db":"{DB}","schema":"public","table":"test_table","txId":null,"lsn":null},"op":"d","ts_ms":{S}}`},
	},
	// Hasura's event trigger payload; the trigger is named by the topic.
	shipper.FormatHasura: {
		{"SNAPSHOT", "7", `{"event":{"op":"MANUAL","data":{"old":null,"new":{"id":7,"name":"abc7"}},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`, ""},
		{"INSERT", "1", `{"event":{"op":"INSERT","data":{"old":null,"new":{"id":1,"name":"abc1"}},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`, ""},
		{"UPDATE", "1", `{"event":{"op":"UPDATE","data":{"old":null,"new":{"name":"abc2"}},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`,
			`{"event":{"op":"UPDATE","data":{"old":{"id":1,"name":"abc1"},"new":{"id":1,"name":"abc2"}},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`},
		{"DELETE", "1", `{"event":{"op":"DELETE","data":{"old":null,"new":null},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`,
			`{"event":{"op":"DELETE","data":{"old":{"id":1,"name":"abc2"},"new":null},"session_variables":null},"created_at":"{C}","id":"{U}","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":"{T}"},"table":{"schema":"public","name":"test_table"}}`},
	},
	// skor's README: {"data": {"id": 1, "name": "abc1"}, "table": "test_table", "op": "INSERT"}.
	shipper.FormatSkor: {
		{"SNAPSHOT", "7", `{"data":{"id":7,"name":"abc7"},"table":"test_table","op":"INSERT"}`, ""},
		{"INSERT", "1", `{"data":{"id":1,"name":"abc1"},"table":"test_table","op":"INSERT"}`, ""},
		{"UPDATE", "1", `{"data":{"name":"abc2"},"table":"test_table","op":"UPDATE"}`,
			`{"data":{"id":1,"name":"abc2"},"table":"test_table","op":"UPDATE"}`},
		{"DELETE", "1", `{"data":{},"table":"test_table","op":"DELETE"}`,
			`{"data":{"id":1,"name":"abc2"},"table":"test_table","op":"DELETE"}`},
	},
	// pgevents. Without whole rows an UPDATE or DELETE does not hold the
	// key column, and id falls back to the external ID, a string.
	shipper.FormatPgevents: {
		{"SNAPSHOT", "7", `{"table_name":"public.test_table","old":{},"new":{"id":7,"name":"abc7"},"id":7,"diff":{"id":7,"name":"abc7"},"action":"I"}`, ""},
		{"INSERT", "1", `{"table_name":"public.test_table","old":{},"new":{"id":1,"name":"abc1"},"id":1,"diff":{"id":1,"name":"abc1"},"action":"I"}`, ""},
		{"UPDATE", "1", `{"table_name":"public.test_table","old":{},"new":{"name":"abc2"},"id":"1","diff":{"name":"abc2"},"action":"U"}`,
			`{"table_name":"public.test_table","old":{"id":1,"name":"abc1"},"new":{"id":1,"name":"abc2"},"id":1,"diff":{"name":"abc2"},"action":"U"}`},
		{"DELETE", "1", `{"table_name":"public.test_table","old":{},"new":{},"id":"1","diff":{},"action":"D"}`,
			`{"table_name":"public.test_table","old":{"id":1,"name":"abc2"},"new":{},"id":1,"diff":{},"action":"D"}`},
	},
}

var shippedAt = regexp.MustCompile(`"ts_ms":(\d+)}$`)

// TestEventFormats ships each statement in each format, with and without
// full_row, and compares the records with the payloads of each tool's
// documentation: keys in Postgres' order, numbers as Postgres prints them.
// The key, headers and timestamp are the same in every format.
func TestEventFormats(t *testing.T) {
	t.Parallel()
	for _, format := range []shipper.Format{shipper.FormatPg2kafka, shipper.FormatDebezium, shipper.FormatHasura, shipper.FormatSkor, shipper.FormatPgevents} {
		for _, full := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/full_row=%t", format, full), func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				b.exec(`CREATE TABLE test_table (id int PRIMARY KEY, name text)`, formatSQL[0],
					fmt.Sprintf(`SELECT pg2kafka.setup('test_table', 'id', full_row => %t)`, full))
				b.exec(formatSQL[1:]...)
				queued := b.queuedEvents()
				cases := formatCases[format]
				if len(queued) != len(cases) {
					t.Fatalf("queue holds %d events, want %d", len(queued), len(cases))
				}
				topic := b.topic("test_table")
				b.createTopics(topic)
				before := time.Now().UnixMilli()
				b.start(shipper.Config{Format: format, Version: "1.2.3"}, kafka.Config{})
				records := b.consume(len(cases), topic)
				after := time.Now().UnixMilli()
				b.waitQueueEmpty()

				byStatement := make(map[string]consumed)
				for _, r := range records {
					byStatement[strings.Split(strings.Split(r.Headers, "pg2kafka-statement:")[1], ",")[0]] = r
				}
				for i, c := range cases {
					q := queued[i]
					want := c.value
					if full && c.full != "" {
						want = c.full
					}
					want = strings.NewReplacer("{U}", q.UUID, "{C}", q.CreatedAt.UTC().Format(time.RFC3339Nano),
						"{M}", strconv.FormatInt(q.CreatedAt.UnixMilli(), 10), "{DB}", b.database, "{T}", topic).Replace(want)
					r, ok := byStatement[c.statement]
					if !ok {
						t.Fatalf("no %s record among %+v", c.statement, records)
					}
					got := r.Value
					if m := shippedAt.FindStringSubmatch(got); m != nil && strings.Contains(want, "{S}") {
						ms, _ := strconv.ParseInt(m[1], 10, 64)
						if ms < before || ms > after {
							t.Errorf("%s: ts_ms %d is not between the shipper's start (%d) and the record's arrival (%d)", c.statement, ms, before, after)
						}
						got = shippedAt.ReplaceAllString(got, `"ts_ms":{S}}`)
					}
					if got != want {
						t.Errorf("%s value:\n got %s\nwant %s", c.statement, got, want)
					}
					if r.Key == nil || *r.Key != c.key {
						t.Errorf("%s key = %v, want %q", c.statement, r.Key, c.key)
					}
					if wantHeaders := "pg2kafka-event-id:" + q.UUID + ", pg2kafka-statement:" + c.statement + ", pg2kafka-table:public.test_table"; r.Headers != wantHeaders {
						t.Errorf("%s headers = %s, want %s", c.statement, r.Headers, wantHeaders)
					}
					if !r.Timestamp.Equal(q.CreatedAt.Truncate(time.Millisecond)) {
						t.Errorf("%s timestamp = %v, want created_at %v", c.statement, r.Timestamp, q.CreatedAt)
					}
				}
			})
		}
	}
}

// pgevents' users example: id is the key column's value with its JSON type,
// numbers and nested JSON as Postgres prints them, diff only what changed.
func TestEventFormatPgeventsUsers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE users (id int PRIMARY KEY, name text, email text, balance numeric, prefs jsonb)`,
		`CREATE TABLE coupons (code text PRIMARY KEY, pct int)`,
		`SELECT pg2kafka.setup('users', 'id', full_row => true)`,
		`SELECT pg2kafka.setup('coupons', 'code', full_row => true)`,
		`INSERT INTO users VALUES (1, 'John', 'john@example.com', 10.50, '{"theme": "dark", "tags": ["a", "b"]}')`,
		`UPDATE users SET email = 'j@example.com', balance = 11.00 WHERE id = 1`,
		`DELETE FROM users`,
		`INSERT INTO coupons VALUES ('007', 5)`,
	)
	users, coupons := b.topic("users"), b.topic("coupons")
	b.createTopics(users, coupons)
	b.start(shipper.Config{Format: shipper.FormatPgevents}, kafka.Config{})
	var got []string
	for _, r := range b.consume(4, users, coupons) {
		got = append(got, r.Value)
	}
	want := []string{
		`{"table_name":"public.users","old":{},"new":{"id":1,"name":"John","email":"john@example.com","prefs":{"tags":["a","b"],"theme":"dark"},"balance":10.50},"id":1,"diff":{"id":1,"name":"John","email":"john@example.com","prefs":{"tags":["a","b"],"theme":"dark"},"balance":10.50},"action":"I"}`,
		`{"table_name":"public.users","old":{"id":1,"name":"John","email":"john@example.com","prefs":{"tags":["a","b"],"theme":"dark"},"balance":10.50},"new":{"id":1,"name":"John","email":"j@example.com","prefs":{"tags":["a","b"],"theme":"dark"},"balance":11.00},"id":1,"diff":{"email":"j@example.com","balance":11.00},"action":"U"}`,
		`{"table_name":"public.users","old":{"id":1,"name":"John","email":"j@example.com","prefs":{"tags":["a","b"],"theme":"dark"},"balance":11.00},"new":{},"id":1,"diff":{},"action":"D"}`,
		`{"table_name":"public.coupons","old":{},"new":{"pct":5,"code":"007"},"id":"007","diff":{"pct":5,"code":"007"},"action":"I"}`,
	}
	// One key per topic, so each topic's records are in order; the topics
	// may interleave.
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("values:\n got %s\nwant %s", strings.Join(got, "\n    "), strings.Join(want, "\n    "))
	}
}

// DEBEZIUM_TOMBSTONES: a DELETE with a key is followed by a record of the
// same key and a null value; one without a key is not. The queue row goes
// once both are acknowledged.
func TestDebeziumTombstones(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE items (id int PRIMARY KEY, sku text)`,
		`SELECT pg2kafka.setup('items', 'sku', full_row => true)`,
		`INSERT INTO items VALUES (1, 'A1'), (2, NULL)`,
		`DELETE FROM items WHERE id = 1`,
		`INSERT INTO items VALUES (3, 'A1')`,
		`DELETE FROM items WHERE id = 2`,
	)
	topic := b.topic("items")
	b.createTopics(topic)
	b.start(shipper.Config{Format: shipper.FormatDebezium, DebeziumTombstones: true}, kafka.Config{})
	records := b.consume(6, topic)
	b.waitQueueEmpty()
	var keyed []string
	for _, r := range records {
		op := "tombstone"
		if r.Value != "" {
			op = shippedAt.ReplaceAllString(r.Value, "")
			op = op[strings.LastIndex(op, `"op":`):]
		}
		if r.Key == nil {
			if op == "tombstone" {
				t.Errorf("a tombstone without a key: %+v", r)
			}
			continue
		}
		if !strings.Contains(r.Headers, "pg2kafka-statement:") {
			t.Errorf("record without pg2kafka headers: %+v", r)
		}
		keyed = append(keyed, *r.Key+" "+op)
	}
	want := []string{`A1 "op":"c",`, `A1 "op":"d",`, "A1 tombstone", `A1 "op":"c",`}
	if !slices.Equal(keyed, want) {
		t.Errorf("records of key A1: %q, want %q", keyed, want)
	}
}

// At startup pg2kafka warns once per table whose options leave the format
// incomplete, and the setup() call it names completes it, keeping the
// table's other options.
func TestEventFormatWarnsOfIncompleteTables(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE orders (id int PRIMARY KEY, status text, note text)`,
		`CREATE TABLE whole (id int PRIMARY KEY)`,
		`CREATE TABLE appends (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('orders', 'id', columns => '{id,status}', include_old => true, topic => 'shop.orders',
			filter => $$NEW.status <> 'draft'$$, operations => '{INSERT,UPDATE}')`,
		`SELECT pg2kafka.setup('whole', 'id', full_row => true)`,
		`SELECT pg2kafka.setup('appends', 'id', operations => '{INSERT}')`,
	)
	b.start(shipper.Config{Format: shipper.FormatHasura}, kafka.Config{})
	b.waitFor("the warning", func() bool { return b.logs.Contains("table's events are incomplete") })
	fix := regexp.MustCompile(`fix="((?:[^"\\]|\\.)*)"`)
	var fixes []string
	for line := range strings.Lines(b.logs.String()) {
		if strings.Contains(line, "table's events are incomplete") {
			m := fix.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("warning without a fix: %s", line)
			}
			s, err := strconv.Unquote(`"` + m[1] + `"`)
			if err != nil {
				t.Fatal(err)
			}
			fixes = append(fixes, s)
			if !strings.Contains(line, "table=public.orders") || !strings.Contains(line, "event_format=hasura") {
				t.Errorf("warning names the wrong table or format: %s", line)
			}
		}
	}
	want := `SELECT pg2kafka.setup('orders', 'id', operations => '{INSERT,UPDATE}', columns => '{"id","status"}', include_old => true, filter => 'NEW.status <> ''draft''', topic => 'shop.orders', full_row => true)`
	if len(fixes) != 1 || fixes[0] != want {
		t.Fatalf("fixes %q, want [%q]", fixes, want)
	}
	b.exec(fixes[0])
	var options string
	if err := b.pool.QueryRow(t.Context(), `SELECT format('%s %s %s %s %s %s', operations, columns, include_old, filter, topic, full_row)
		FROM pg2kafka.tracked_tables WHERE relation = 'orders'::regclass`).Scan(&options); err != nil {
		t.Fatal(err)
	}
	if want := `{INSERT,UPDATE} {id,status} t NEW.status <> 'draft' shop.orders t`; options != want {
		t.Errorf("after the fix the options are %s, want %s", options, want)
	}
}
