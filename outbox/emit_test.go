package outbox_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// emitted is a queue row of an event of pg2kafka.emit(), as it is stored.
type emitted struct {
	ExternalID  *string `db:"external_id"`
	TableSchema string  `db:"table_schema"`
	TableName   string  `db:"table_name"`
	Statement   string  `db:"statement"`
	Data        string  `db:"data"`
	Topic       *string `db:"topic"`
	Old         *string `db:"old"`
}

func (b *bundle) requireEmitted(t *testing.T, want ...emitted) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT external_id, table_schema, table_name, statement, data::text AS data, topic, old::text AS old
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[emitted])
	if err != nil {
		t.Fatalf("read queue: %v", err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("queue:\n got %+v\nwant %+v", got, want)
	}
}

// orderEvent returns the row emit() queues for an event of topic "shop.order-events".
func orderEvent(key *string, data string, headers *string) emitted {
	return emitted{ExternalID: key, TableSchema: "", TableName: "shop.order-events", Statement: outbox.StatementEvent,
		Data: data, Topic: ptr("shop.order-events"), Old: headers}
}

// The event is queued by the caller's transaction: committed, it is there;
// rolled back, or in a savepoint rolled back, it never was.
func TestEmitQueuesInTheCallersTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	conn, _ := b.connect(t)
	for _, sql := range []string{
		`BEGIN`,
		`SELECT pg2kafka.emit('shop.order-events', '1', '{"n":1}')`,
		`COMMIT`,
		`BEGIN`,
		`SELECT pg2kafka.emit('shop.order-events', '2', '{"n":2}')`,
		`ROLLBACK`,
		`BEGIN`,
		`SAVEPOINT a`,
		`SELECT pg2kafka.emit('shop.order-events', '3', '{"n":3}')`,
		`ROLLBACK TO SAVEPOINT a`,
		`SAVEPOINT b`,
		`SELECT pg2kafka.emit('shop.order-events', '4', '{"n":4}')`,
		`RELEASE SAVEPOINT b`,
		`COMMIT`,
		`BEGIN`,
		`SAVEPOINT c`,
		`SELECT pg2kafka.emit('shop.order-events', '5', '{"n":5}')`,
		`RELEASE SAVEPOINT c`,
		`ROLLBACK`,
	} {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	b.requireEmitted(t,
		orderEvent(ptr("1"), `"{\"n\":1}"`, nil),
		orderEvent(ptr("4"), `"{\"n\":4}"`, nil),
	)
}

// What each overload stores: a JSON string holding the exact text of a json
// or text payload, and of a jsonb string; any other jsonb value as itself.
func TestEmitStoresThePayloadAndHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(t,
		`SELECT pg2kafka.emit(topic => 'shop.order-events', key => '42', payload => '{"type":"OrderPaid", "order":42}', headers => '{"event-type":"OrderPaid"}')`,
		`SELECT pg2kafka.emit('shop.order-events', '42', '{"z": 1, "a": [true,  null]}'::json)`,
		`SELECT pg2kafka.emit('shop.order-events', NULL, '{"z": 1, "a": [true,  null]}'::jsonb, '{}')`,
		`SELECT pg2kafka.emit('shop.order-events', '7', '"a \"quoted\" string"'::jsonb)`,
		`SELECT pg2kafka.emit('shop.order-events', '7', E' [1,\n 2] ')`,
		`SELECT pg2kafka.emit('shop.order-events', '8', '{}', '{"via":"pg2kafka-bridge"}')`,
	)
	b.requireEmitted(t,
		orderEvent(ptr("42"), `"{\"type\":\"OrderPaid\", \"order\":42}"`, ptr(`{"event-type": "OrderPaid"}`)),
		orderEvent(ptr("42"), `"{\"z\": 1, \"a\": [true,  null]}"`, nil),
		orderEvent(nil, `{"a": [true, null], "z": 1}`, ptr(`{}`)),
		orderEvent(ptr("7"), `"\"a \\\"quoted\\\" string\""`, nil),
		orderEvent(ptr("7"), `" [1,\n 2] "`, nil),
		orderEvent(ptr("8"), `"{}"`, ptr(`{"via": "pg2kafka-bridge"}`)),
	)
}

// Every bad argument is refused with an error naming it, and nothing is
// queued.
func TestEmitBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('orders', 'id', topic => 'shop.orders')`,
		`UPDATE pg2kafka.settings SET emit_max_bytes = 20`,
	)
	long := strings.Repeat("t", 250)
	// What emit() says a topic name is, when it refuses one.
	const topicRule = `A topic name is 1 to 249 characters, each an ASCII letter, a digit, '.', '_' or '-', and not "." or "..".`
	tests := []struct {
		sql  string
		want pgconn.PgError
	}{
		{`SELECT pg2kafka.emit(NULL, 'k', '{}')`, pgconn.PgError{Code: "22004",
			Message: `pg2kafka.emit: topic must not be null`,
			Hint:    `Name the Kafka topic the event goes to, e.g. topic => 'shop.order-events'.`}},
		{`SELECT pg2kafka.emit('shop orders', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "shop orders" is not a name Kafka accepts`,
			Detail:  topicRule}},
		{`SELECT pg2kafka.emit('', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "" is not a name Kafka accepts`,
			Detail:  topicRule}},
		{`SELECT pg2kafka.emit('..', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic ".." is not a name Kafka accepts`,
			Detail:  topicRule}},
		{`SELECT pg2kafka.emit('` + long + `', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "` + long + `" is not a name Kafka accepts`,
			Detail:  topicRule}},
		{`SELECT pg2kafka.emit('shöp', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "shöp" is not a name Kafka accepts`,
			Detail:  topicRule}},
		{`SELECT pg2kafka.emit('pg2kafka.shop.orders', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "pg2kafka.shop.orders" is reserved for row changes`,
			Hint:    `Topics named pg2kafka.… carry the row changes of tracked tables; emit to a topic of the application's own.`}},
		{`SELECT pg2kafka.emit('shop.orders', 'k', '{}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: topic "shop.orders" carries the row changes of table orders`,
			Hint:    `Emit to a topic of the application's own, so that consumers of the table's topic only ever read its row changes.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', NULL::jsonb)`, pgconn.PgError{Code: "22004",
			Message: `pg2kafka.emit: payload must not be null`, Hint: `For a JSON null, pass payload => 'null'.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', NULL::json)`, pgconn.PgError{Code: "22004",
			Message: `pg2kafka.emit: payload must not be null`, Hint: `For a JSON null, pass payload => 'null'.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', NULL)`, pgconn.PgError{Code: "22004",
			Message: `pg2kafka.emit: payload must not be null`, Hint: `For a JSON null, pass payload => 'null'.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{"type":')`, pgconn.PgError{Code: "22P02",
			Message: `pg2kafka.emit: payload is not JSON: The input string ended unexpectedly.`,
			Hint:    `The payload is the record's value, a JSON text such as '{"type":"OrderPaid","order":42}'.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', 'OrderPaid')`, pgconn.PgError{Code: "22P02",
			Message: `pg2kafka.emit: payload is not JSON: Token "OrderPaid" is invalid.`,
			Hint:    `The payload is the record's value, a JSON text such as '{"type":"OrderPaid","order":42}'.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{"text":"21 bytes!!"}')`, pgconn.PgError{Code: "54000",
			Message: `pg2kafka.emit: payload is 21 bytes, over the limit of 20 bytes`,
			Hint:    `The owner of schema pg2kafka sets the limit: UPDATE pg2kafka.settings SET emit_max_bytes = …; raise the topic's max.message.bytes with it.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{"text":"21 bytes!!"}'::json)`, pgconn.PgError{Code: "54000",
			Message: `pg2kafka.emit: payload is 21 bytes, over the limit of 20 bytes`,
			Hint:    `The owner of schema pg2kafka sets the limit: UPDATE pg2kafka.settings SET emit_max_bytes = …; raise the topic's max.message.bytes with it.`}},
		// jsonb is measured in its text, with a space after each colon:
		// the most it can take once shipped.
		{`SELECT pg2kafka.emit('shop.events', 'k', '{"text":"20 bytes!"}'::jsonb)`, pgconn.PgError{Code: "54000",
			Message: `pg2kafka.emit: payload is 21 bytes, over the limit of 20 bytes`,
			Hint:    `The owner of schema pg2kafka sets the limit: UPDATE pg2kafka.settings SET emit_max_bytes = …; raise the topic's max.message.bytes with it.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', '["event-type"]')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers must be a JSON object of strings, not a JSON array`,
			Hint:    `For example headers => '{"event-type":"OrderPaid"}'; null for none.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', 'null')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers must be a JSON object of strings, not a JSON null`,
			Hint:    `For example headers => '{"event-type":"OrderPaid"}'; null for none.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', '{"a":"1","attempt":3}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers: the value of "attempt" is a JSON number, not a string`,
			Hint:    `Header values are strings: write {"attempt":"3"}, not {"attempt":3}.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', '{"trace":{"id":"x"}}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers: the value of "trace" is a JSON object, not a string`,
			Hint:    `Header values are strings: write {"attempt":"3"}, not {"attempt":3}.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', '{"tags":["a","b"]}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers: the value of "tags" is a JSON array, not a string`,
			Hint:    `Header values are strings: write {"attempt":"3"}, not {"attempt":3}.`}},
		{`SELECT pg2kafka.emit('shop.events', 'k', '{}', '{"a":"pg2kafka-b","PG2Kafka-Event-Id":"mine"}')`, pgconn.PgError{Code: "22023",
			Message: `pg2kafka.emit: headers: "PG2Kafka-Event-Id" is a header of pg2kafka's own`,
			Hint:    `pg2kafka sets the headers named pg2kafka-… itself; name the application's headers otherwise.`}},
	}
	for _, tt := range tests {
		_, err := b.pool.Exec(b.ctx, tt.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Errorf("%s: got %v, want %s", tt.sql, err, tt.want.Message)
			continue
		}
		got := pgconn.PgError{Code: pgErr.Code, Message: pgErr.Message, Detail: pgErr.Detail, Hint: pgErr.Hint}
		if got != tt.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.sql, got, tt.want)
		}
	}
	b.requireEmitted(t)

	// At the limit is not over it.
	b.exec(t, `SELECT pg2kafka.emit('shop.events', 'k', '{"text":"20 bytes!"}')`)
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 1 {
		t.Errorf("%d events queued, want 1", n)
	}
	// A limit of nothing is refused by its constraint.
	_, err := b.pool.Exec(b.ctx, `UPDATE pg2kafka.settings SET emit_max_bytes = 0`)
	if err == nil || !strings.Contains(err.Error(), `"emit_max_bytes_positive"`) {
		t.Errorf("emit_max_bytes = 0: got %v, want a violation of emit_max_bytes_positive", err)
	}
}

// Only members of pg2kafka_emitter may emit, and emitting gives them nothing
// else: no row change queued in a table's name, no other write, nothing to
// read, and none of their code run, whatever their search_path.
func TestEmitRights(t *testing.T) {
	t.Parallel()
	app := pgtest.NewRole(t)
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY)`, `SELECT pg2kafka.setup('orders', 'id')`)
	var database string
	if err := b.pool.QueryRow(b.ctx, `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}
	role := pgx.Identifier{app.Name}.Sanitize()
	b.exec(t, `GRANT CREATE ON DATABASE `+pgx.Identifier{database}.Sanitize()+` TO `+role)
	conn, err := pgx.Connect(b.ctx, app.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(b.ctx)
	refused := func(sql, want string) {
		t.Helper()
		_, err := conn.Exec(b.ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || pgErr.Message != want {
			t.Errorf("as %s: %s: got %v, want permission denied: %s", app.Name, sql, err, want)
		}
	}

	refused(`SELECT pg2kafka.emit('shop.events', '1', '{}')`, "permission denied for schema pg2kafka")
	b.exec(t, `GRANT USAGE ON SCHEMA pg2kafka TO `+role)
	refused(`SELECT pg2kafka.emit('shop.events', '1', '{}')`, "permission denied for function emit")
	b.exec(t, `REVOKE USAGE ON SCHEMA pg2kafka FROM `+role, `GRANT pg2kafka_emitter TO `+role)

	for _, sql := range append(hijackSQL, `SET search_path = evil, pg_catalog`) {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("as %s: %s: %v", app.Name, sql, err)
		}
	}
	// Their casts name pg_catalog's types: they shadow jsonb themselves.
	for _, sql := range []string{
		`SELECT pg2kafka.emit('shop.events', '1', '{"n":1}'::pg_catalog.jsonb, '{"a":"b"}')`,
		`SELECT pg2kafka.emit('shop.events', '1', '{"n":2}'::pg_catalog.json, '{"a":"b"}')`,
		`SELECT pg2kafka.emit('shop.events', '1', '{"n":3}', '{"a":"b"}')`,
	} {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Errorf("as a member of pg2kafka_emitter, with search_path = evil, pg_catalog: %s: %v", sql, err)
		}
	}
	refused(`SELECT pg2kafka.refuse_emitted('shop.events', 2, NULL)`, "permission denied for function refuse_emitted")
	refused(`SELECT pg2kafka.emittable('shop.events', NULL)`, "permission denied for function emittable")
	refused(`INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data)
	         VALUES ('1', 'public', 'orders', 'INSERT', '{}')`, "permission denied for table outbound_event_queue")
	refused(`SELECT count(*) FROM pg2kafka.outbound_event_queue`, "permission denied for table outbound_event_queue")
	refused(`UPDATE pg2kafka.settings SET emit_max_bytes = 1 << 30`, "permission denied for table settings")
	refused(`SELECT pg2kafka.grant_emitter_privileges()`, "permission denied for function grant_emitter_privileges")

	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue WHERE statement = 'EVENT' AND table_schema = '' AND old = '{"a":"b"}'`); n != 3 {
		t.Errorf("%d events queued by the member of pg2kafka_emitter, want 3", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue WHERE statement <> 'EVENT'`); n != 0 {
		t.Errorf("%d row changes queued, want none", n)
	}
}

// pg2kafka_emitter holds what emitting needs and nothing more.
func TestEmitterPrivileges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	want := []string{
		"EXECUTE ON FUNCTION pg2kafka.emit(text,text,json,jsonb)",
		"EXECUTE ON FUNCTION pg2kafka.emit(text,text,jsonb,jsonb)",
		"EXECUTE ON FUNCTION pg2kafka.emit(text,text,text,jsonb)",
		"USAGE ON SCHEMA pg2kafka",
	}
	if got := grantedTo(t, b.pool, "pg2kafka_emitter"); !reflect.DeepEqual(got, want) {
		t.Errorf("pg2kafka_emitter holds %q, want %q", got, want)
	}
}

// Going below version 11 would hand emitted events to a shipper that takes
// them for row changes: it is refused while any is queued or dead-lettered.
func TestMigrateDownRefusesWhileEventsAreQueued(t *testing.T) {
	t.Parallel()
	b := setup(t, `SELECT pg2kafka.emit('shop.events', '1', '{}')`)
	err := outbox.MigrateDownTo(b.ctx, b.pool, 10)
	if err == nil || !strings.Contains(err.Error(), "pg2kafka: 1 events of pg2kafka.emit() are queued and 0 dead-lettered, which versions before 11 cannot ship") {
		t.Fatalf("MigrateDownTo(10) with an emitted event queued: got %v, want a refusal naming the event", err)
	}
	b.exec(t, `DELETE FROM pg2kafka.outbound_event_queue`)
	if err := outbox.MigrateDownTo(b.ctx, b.pool, 10); err != nil {
		t.Fatalf("MigrateDownTo(10): %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_proc WHERE proname IN ('emit', 'emittable', 'refuse_emitted', 'grant_emitter_privileges')`); n != 0 {
		t.Errorf("%d functions of version 11 left after going down", n)
	}
}
