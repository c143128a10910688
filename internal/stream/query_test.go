package stream

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pg2kafka/pg2kafka/outbox"
)

func TestParseQuery(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want Query
	}{
		{"*:products", Query{Table: outbox.Table{Name: "products"}}},
		{"INSERT:sales.orders", Query{Statements: []string{"INSERT"}, Table: outbox.Table{Schema: "sales", Name: "orders"}}},
		{"update:products:price.gt.9.50", Query{Statements: []string{"UPDATE"}, Table: outbox.Table{Name: "products"},
			Filter: &Filter{Column: "price", Op: "gt", Values: []string{"9.50"}}}},
		{"delete:products:sku.in.(A1,B 2)", Query{Statements: []string{"DELETE"}, Table: outbox.Table{Name: "products"},
			Filter: &Filter{Column: "sku", Op: "in", Values: []string{"A1", "B 2"}}}},
		// A value may hold colons and dots.
		{"snapshot:products:updated_at.lt.2026-01-02T03:04:05.5Z", Query{Statements: []string{"SNAPSHOT"}, Table: outbox.Table{Name: "products"},
			Filter: &Filter{Column: "updated_at", Op: "lt", Values: []string{"2026-01-02T03:04:05.5Z"}}}},
		{"*:products:name.eq.", Query{Table: outbox.Table{Name: "products"}, Filter: &Filter{Column: "name", Op: "eq", Values: []string{""}}}},
	} {
		got, err := ParseQuery(tt.in)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseQuery(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseQueryRefuses(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                       "no query",
		"products":               `query "products" names no table`,
		"insert:":                `query "insert:" names no table`,
		"upsert:products":        `unknown change_type "upsert"`,
		"*:a.b.c":                `table "a.b.c" is not a name or schema.name`,
		"*:.orders":              `table ".orders" is not a name or schema.name`,
		"*:products:price":       `filter "price" is not <column>.<op>.<value>`,
		"*:products:price.gt":    `filter "price.gt" is not <column>.<op>.<value>`,
		"*:products:price.like.": `unknown op "like"`,
		"*:products:sku.in.A,B":  "in takes a list in parentheses, such as sku.in.(a,b)",
	} {
		_, err := ParseQuery(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "want query=<change_type>:<table>") {
			t.Errorf("ParseQuery(%q) = %v; want an error saying %q and what is allowed", in, err, want)
		}
	}
}

func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{"*:products", "update:sales.orders:price.in.(1,2)", "x:y:z.eq.:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuery(s)
		if err != nil {
			return
		}
		if q.Table.Name == "" || q.Filter != nil && (q.Filter.Column == "" || !ops[q.Filter.Op] || len(q.Filter.Values) == 0) {
			t.Errorf("ParseQuery(%q) = %+v: accepted without a table, column, op or value", s, q)
		}
		// Matching never fails, whatever the data.
		q.Table.Schema = "public"
		e := outbox.Event{TableSchema: "public", TableName: q.Table.Name, Statement: "INSERT", Data: []byte(s)}
		q.Match(&e, nil)
	})
}

func TestResolve(t *testing.T) {
	t.Parallel()
	tracked := []outbox.Table{{Schema: "public", Name: "products"}, {Schema: "sales", Name: "orders"}, {Schema: "a", Name: "items"}, {Schema: "b", Name: "items"}}
	for in, want := range map[string]string{
		"products":        "public.products",
		"public.products": "public.products",
		"orders":          "sales.orders",
		"sales.orders":    "sales.orders",
		"a.items":         "a.items",
		"items":           "table items is tracked in several schemas; name one of them as schema.table: tracked tables: public.products, sales.orders, a.items, b.items",
		"users":           "table users is not tracked; tracked tables: public.products, sales.orders, a.items, b.items",
		"public.orders":   "table public.orders is not tracked; tracked tables:",
	} {
		q, err := ParseQuery("*:" + in)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if err := q.Resolve(tracked); err != nil {
			got = err.Error()
		} else {
			got = q.Table.Schema + "." + q.Table.Name
		}
		if !strings.HasPrefix(got, want) {
			t.Errorf("Resolve(%q) = %q, want %q", in, got, want)
		}
	}
	q, _ := ParseQuery("*:products")
	if err := q.Resolve(nil); err == nil || !strings.Contains(err.Error(), "no table is tracked yet") {
		t.Errorf("Resolve with nothing tracked = %v", err)
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	ann := "ann"
	insert := outbox.Event{TableSchema: "public", TableName: "products", Statement: "INSERT", ExternalID: &ann,
		Data: []byte(`{"sku": "A1", "price": 9.50, "qty": 3, "active": true, "note": null, "tags": ["x", "y"], "at": "2026-01-02T03:04:05Z"}`)}
	update := outbox.Event{TableSchema: "public", TableName: "products", Statement: "UPDATE", Data: []byte(`{"price": 12}`)}
	other := outbox.Event{TableSchema: "sales", TableName: "products", Statement: "INSERT", Data: []byte(`{}`)}
	for _, tt := range []struct {
		query string
		event *outbox.Event
		want  bool
	}{
		{"*:products", &insert, true},
		{"*:products", &other, false},
		{"insert:products", &update, false},
		{"update:products", &update, true},
		{"*:products:sku.eq.A1", &insert, true},
		{"*:products:sku.eq.a1", &insert, false},
		{"*:products:sku.neq.A1", &insert, false},
		{"*:products:price.eq.9.5", &insert, true},
		{"*:products:price.gt.9.49", &insert, true},
		{"*:products:price.gte.9.50", &insert, true},
		{"*:products:price.lt.10", &insert, true},
		{"*:products:price.lte.9.4", &insert, false},
		{"*:products:qty.gt.10", &insert, false}, // as numbers, not as text
		{"*:products:qty.in.(1,2,3)", &insert, true},
		{"*:products:sku.in.(B1,C1)", &insert, false},
		{"*:products:active.eq.true", &insert, true},
		{"*:products:note.eq.null", &insert, true},
		{"*:products:tags.eq.[\"x\",\"y\"]", &insert, true},
		{"*:products:at.gt.2026-01-01", &insert, true},
		{"*:products:external_id.eq.ann", &insert, true},
		{"*:products:external_id.eq.null", &update, true},
		// An UPDATE carries only what changed: a filter on another column
		// does not match it.
		{"update:products:sku.eq.A1", &update, false},
		{"update:products:price.gt.10", &update, true},
		{"*:products:missing.eq.1", &insert, false},
	} {
		q, err := ParseQuery(tt.query)
		if err != nil {
			t.Fatal(err)
		}
		q.Table.Schema = "public"
		if got := q.Match(tt.event, nil); got != tt.want {
			t.Errorf("%s matches %s %s: %v, want %v", tt.query, tt.event.Statement, tt.event.Data, got, tt.want)
		}
	}
}
