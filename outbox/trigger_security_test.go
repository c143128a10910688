package outbox_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
)

// hijackSQL, run by a writer with a schema of its own, shadows every type,
// function and operator enqueue_event() uses with one that fails, loudly,
// when called. enqueue_event() runs with its owner's rights and without a
// pinned search_path, so a writer whose search_path puts such a schema before
// pg_catalog would run its code as that owner if the trigger named anything
// unqualified.
var hijackSQL = []string{
	`CREATE SCHEMA evil`,
	`CREATE FUNCTION evil.hijacked() RETURNS boolean LANGUAGE plpgsql AS $$
	 BEGIN RAISE EXCEPTION 'hijacked: evil code ran as %', current_user; END $$`,
	`CREATE FUNCTION evil.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT CASE WHEN evil.hijacked() THEN '{}'::pg_catalog.jsonb END $$`,
	`CREATE FUNCTION evil.jsonb_each(pg_catalog.jsonb, OUT key text, OUT value pg_catalog.jsonb) RETURNS SETOF record LANGUAGE sql AS $$ SELECT NULL::text, NULL::pg_catalog.jsonb WHERE evil.hijacked() $$`,
	`CREATE FUNCTION evil.agg_step(pg_catalog.jsonb, text, pg_catalog.jsonb) RETURNS pg_catalog.jsonb LANGUAGE sql AS $$ SELECT CASE WHEN evil.hijacked() THEN $1 END $$`,
	`CREATE AGGREGATE evil.jsonb_object_agg(text, pg_catalog.jsonb) (SFUNC = evil.agg_step, STYPE = pg_catalog.jsonb)`,
	`CREATE FUNCTION evil.field(pg_catalog.jsonb, text) RETURNS text LANGUAGE sql AS $$ SELECT CASE WHEN evil.hijacked() THEN '' END $$`,
	`CREATE FUNCTION evil.element(pg_catalog.jsonb, text) RETURNS pg_catalog.jsonb LANGUAGE sql AS $$ SELECT CASE WHEN evil.hijacked() THEN '{}'::pg_catalog.jsonb END $$`,
	`CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.hijacked() $$`,
	`CREATE FUNCTION evil.jsonb_eq(pg_catalog.jsonb, pg_catalog.jsonb) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.hijacked() $$`,
	`CREATE FUNCTION evil.int_gt(integer, integer) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.hijacked() $$`,
	`CREATE OPERATOR evil.->> (LEFTARG = pg_catalog.jsonb, RIGHTARG = text, FUNCTION = evil.field)`,
	`CREATE OPERATOR evil.-> (LEFTARG = pg_catalog.jsonb, RIGHTARG = text, FUNCTION = evil.element)`,
	`CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq)`,
	`CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq)`,
	`CREATE OPERATOR evil.= (LEFTARG = pg_catalog.jsonb, RIGHTARG = pg_catalog.jsonb, FUNCTION = evil.jsonb_eq)`,
	`CREATE OPERATOR evil.> (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int_gt)`,
	// Types too: a variable declared jsonb or bool would become these.
	`CREATE TYPE evil.jsonb AS (hijacked int)`,
	`CREATE TYPE evil.bool AS (hijacked int)`,
}

// The change trigger is immune to its caller's search_path: a writer who
// shadows pg_catalog's functions, operators and types with its own gets the
// events it would have got anyway, and none of its code runs.
func TestTriggerIgnoresTheWritersSearchPath(t *testing.T) {
	t.Parallel()
	writer := pgtest.NewRole(t)
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, name text, price int)`,
		`CREATE TABLE orders (id int PRIMARY KEY, status text, note text)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		// Every option, so that every branch of the trigger runs.
		`SELECT pg2kafka.setup('orders', 'id', columns => '{id,status}', include_old => true, topic => 'orders.v1')`,
		`CREATE TABLE carts (id int PRIMARY KEY, total int)`,
		`CREATE TABLE parcels (id int PRIMARY KEY, status text, note text)`,
		`SELECT pg2kafka.setup('carts', 'id', full_row => true)`,
		`SELECT pg2kafka.setup('parcels', 'id', columns => '{id,status}', full_row => true)`,
	)
	var database string
	if err := b.pool.QueryRow(b.ctx, `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}
	role := pgx.Identifier{writer.Name}.Sanitize()
	b.exec(t,
		`GRANT CREATE ON DATABASE `+pgx.Identifier{database}.Sanitize()+` TO `+role,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON items, orders, carts, parcels TO `+role,
	)
	conn, err := pgx.Connect(b.ctx, writer.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(b.ctx)
	for _, sql := range append(hijackSQL, `SET search_path = evil, pg_catalog`) {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("as the writer: %s: %v", sql, err)
		}
	}
	for _, sql := range []string{
		`INSERT INTO public.items VALUES (1, 'mug', 5)`,
		`UPDATE public.items SET price = 6 WHERE id = 1`,
		`UPDATE public.items SET price = 6 WHERE id = 1`, // no change, no event
		`DELETE FROM public.items WHERE id = 1`,
		`INSERT INTO public.orders VALUES (7, 'new', 'fragile')`,
		`UPDATE public.orders SET status = 'paid', note = 'wrapped' WHERE id = 7`,
		`UPDATE public.orders SET note = 'unwrapped' WHERE id = 7`, // no kept column changed
		`DELETE FROM public.orders WHERE id = 7`,
		`INSERT INTO public.carts VALUES (3, 10)`,
		`UPDATE public.carts SET total = 11`,
		`UPDATE public.carts SET total = 11`, // no change, no event
		`DELETE FROM public.carts`,
		`INSERT INTO public.parcels VALUES (4, 'new', 'fragile')`,
		`UPDATE public.parcels SET status = 'sent'`,
		`UPDATE public.parcels SET note = 'heavy'`, // no kept column changed
		`DELETE FROM public.parcels`,
	} {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("as the writer, with search_path = evil, pg_catalog: %s: %v", sql, err)
		}
	}
	ptr := func(s string) *string { return &s }
	topic := ptr("orders.v1")
	b.requireEvents(t,
		event{ExternalID: ptr("1"), Statement: "INSERT", Data: `{"id": 1, "name": "mug", "price": 5}`},
		event{ExternalID: ptr("1"), Statement: "UPDATE", Data: `{"price": 6}`},
		event{ExternalID: ptr("1"), Statement: "DELETE", Data: `{}`},
		event{ExternalID: ptr("7"), Statement: "INSERT", Data: `{"id": 7, "status": "new"}`, Topic: topic},
		event{ExternalID: ptr("7"), Statement: "UPDATE", Data: `{"status": "paid"}`, Old: ptr(`{"status": "new"}`), Topic: topic},
		event{ExternalID: ptr("7"), Statement: "DELETE", Data: `{}`, Old: ptr(`{"id": 7, "status": "paid"}`), Topic: topic},
		event{ExternalID: ptr("3"), Statement: "INSERT", Data: `{"id": 3, "total": 10}`},
		event{ExternalID: ptr("3"), Statement: "UPDATE", Data: `{"id": 3, "total": 11}`, Old: ptr(`{"id": 3, "total": 10}`)},
		event{ExternalID: ptr("3"), Statement: "DELETE", Data: `{}`, Old: ptr(`{"id": 3, "total": 11}`)},
		event{ExternalID: ptr("4"), Statement: "INSERT", Data: `{"id": 4, "status": "new"}`},
		event{ExternalID: ptr("4"), Statement: "UPDATE", Data: `{"id": 4, "status": "sent"}`, Old: ptr(`{"id": 4, "status": "new"}`)},
		event{ExternalID: ptr("4"), Statement: "DELETE", Data: `{}`, Old: ptr(`{"id": 4, "status": "sent"}`)},
	)
}
