package shipper

import (
	"errors"
	"testing"

	"github.com/pg2kafka/pg2kafka/outbox"
)

func TestAppendDiff(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, data, old, want string }{
		{"whole rows", `{"id": 1, "name": "abc2", "tags": ["a", "b"]}`, `{"id": 1, "name": "abc1", "tags": ["a", "b"]}`, `{"name":"abc2"}`},
		{"nested values compared whole", `{"id": 1, "doc": {"a": 1, "b": [1, 2]}}`, `{"id": 1, "doc": {"a": 1, "b": [1, 3]}}`, `{"doc":{"a":1,"b":[1,2]}}`},
		{"changed columns only", `{"name": "abc2"}`, `{"name": "abc1"}`, `{"name":"abc2"}`},
		{"no old", `{"name": "abc2"}`, "", `{"name":"abc2"}`},
		{"strings with delimiters", `{"a": "x, \"y\": {", "b": 2}`, `{"a": "x, \"y\": {", "b": 1}`, `{"b":2}`},
		{"keys in another order", `{"a": 1, "b": 2, "cc": 3}`, `{"cc": 3, "b": 2, "a": 0}`, `{"a":1}`},
		{"a key old lacks", `{"a": 1, "b": 2}`, `{"a": 1}`, `{"b":2}`},
		{"nothing differs", `{"a": null}`, `{"a": null}`, `{}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var old []byte
			if tt.old != "" {
				old = []byte(tt.old)
			}
			if got := string(appendDiff(nil, []byte(tt.data), old)); got != tt.want {
				t.Errorf("appendDiff(%s, %s) = %s, want %s", tt.data, tt.old, got, tt.want)
			}
		})
	}
}

func TestMemberValue(t *testing.T) {
	t.Parallel()
	row := []byte(`{"id": 1, "name": "a \"b\"", "Key": "k1", "nested": {"id": 2}, "last": [1, {"x": "}"}]}`)
	for key, want := range map[string]string{
		`"id"`: `1`, `"name"`: `"a \"b\""`, `"Key"`: `"k1"`, `"nested"`: `{"id": 2}`, `"last"`: `[1, {"x": "}"}]`,
	} {
		if got := string(memberValue(row, []byte(key))); got != want {
			t.Errorf("memberValue(%s) = %s, want %s", key, got, want)
		}
	}
	if got := memberValue(row, []byte(`"x"`)); got != nil {
		t.Errorf("memberValue of a nested key = %s, want nil", got)
	}
	if got := memberValue([]byte(`{}`), []byte(`"id"`)); got != nil {
		t.Errorf("memberValue of {} = %s, want nil", got)
	}
}

// A tombstone's event is acknowledged only when both its records are, and
// fails with the first failure of either.
func TestPerEvent(t *testing.T) {
	t.Parallel()
	refused := &RejectedError{Err: errors.New("too large")}
	down := errors.New("broker down")
	msgs := []Message{{Topic: "a"}, {Topic: "b"}, {Topic: "b"}, {Topic: "c"}, {Topic: "d"}, {Topic: "d"}}
	firsts := []int{0, 1, 3, 4}
	errs := []error{nil, nil, down, nil, refused, nil}
	own, results := perEvent(msgs, errs, firsts)
	wantTopics := []string{"a", "b", "c", "d"}
	wantErrs := []error{nil, down, nil, refused}
	for i := range firsts {
		if own[i].Topic != wantTopics[i] || results[i] != wantErrs[i] {
			t.Errorf("event %d: %s, %v; want %s, %v", i, own[i].Topic, results[i], wantTopics[i], wantErrs[i])
		}
	}
}

func TestCompletingSetup(t *testing.T) {
	t.Parallel()
	filter := "NEW.status <> 'draft'"
	topic := "shop.orders"
	for _, tt := range []struct {
		table outbox.TrackedTable
		want  string
	}{
		{outbox.TrackedTable{Schema: "public", Name: "orders", KeyColumn: "id", Operations: []string{"INSERT", "UPDATE", "DELETE"}},
			`SELECT pg2kafka.setup('orders', 'id', full_row => true)`},
		{outbox.TrackedTable{Schema: "sales", Name: "Order Items", KeyColumn: "Order's id", Operations: []string{"INSERT", "UPDATE"},
			Columns: []string{"id", `odd "name"`}, IncludeOld: true, Filter: filter, Topic: topic},
			`SELECT pg2kafka.setup('sales."Order Items"', 'Order''s id', operations => '{INSERT,UPDATE}', columns => '{"id","odd \"name\""}', include_old => true, filter => 'NEW.status <> ''draft''', topic => 'shop.orders', full_row => true)`},
	} {
		if got := completingSetup(&tt.table); got != tt.want {
			t.Errorf("completingSetup:\n got %s\nwant %s", got, tt.want)
		}
	}
}
