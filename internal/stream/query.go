// Package stream is pg2kafka's live stream: events, once their destination
// has acknowledged them, sent over WebSockets to whoever watches a table, as
// speculare-pgcdc does (GET /ws?query=<change_type>:<table>[:<filter>]).
// It taps the shipper and never holds it up: each viewer has a bounded
// buffer, and a viewer who falls behind it is disconnected.
package stream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Query is what a viewer asked to watch.
type Query struct {
	// Statements are the statements of the events shown, INSERT, UPDATE,
	// DELETE or SNAPSHOT; nil for all of them.
	Statements []string
	// Table is the table watched. Its schema is empty until Resolve.
	Table outbox.Table
	// Filter, if not nil, shows only the events whose column matches it.
	Filter *Filter
}

// Filter compares one column of an event with a value.
type Filter struct {
	// Column is a key of the event's data, or external_id, the event's
	// external ID when its data has no such key.
	Column string
	// Op is eq, neq, lt, lte, gt, gte or in.
	Op string
	// Values is the value compared with, or for in the values.
	Values []string
}

// QuerySyntax says what a query looks like, for error messages.
const QuerySyntax = "want query=<change_type>:<table>[:<column>.<op>.<value>], change_type one of *, insert, update, delete, snapshot; " +
	"table such as products or sales.orders; op one of eq, neq, lt, lte, gt, gte, in (column.in.(a,b)); e.g. query=update:products:price.gt.10"

var changeTypes = map[string][]string{
	"*":        nil,
	"insert":   {"INSERT"},
	"update":   {"UPDATE"},
	"delete":   {"DELETE"},
	"snapshot": {"SNAPSHOT"},
}

var ops = map[string]bool{"eq": true, "neq": true, "lt": true, "lte": true, "gt": true, "gte": true, "in": true}

// ParseQuery parses a query as viewers write it. The error says what is
// wrong and what is allowed.
func ParseQuery(s string) (Query, error) {
	if s == "" {
		return Query{}, fmt.Errorf("no query: %s", QuerySyntax)
	}
	parts := strings.SplitN(s, ":", 3)
	if len(parts) < 2 || parts[1] == "" {
		return Query{}, fmt.Errorf("query %q names no table: %s", s, QuerySyntax)
	}
	statements, ok := changeTypes[strings.ToLower(parts[0])]
	if !ok {
		return Query{}, fmt.Errorf("query %q: unknown change_type %q: %s", s, parts[0], QuerySyntax)
	}
	q := Query{Statements: statements}
	schema, name, qualified := strings.Cut(parts[1], ".")
	if !qualified {
		schema, name = "", parts[1]
	}
	if name == "" || schema == "" && qualified || strings.Contains(name, ".") {
		return Query{}, fmt.Errorf("query %q: table %q is not a name or schema.name: %s", s, parts[1], QuerySyntax)
	}
	q.Table = outbox.Table{Schema: schema, Name: name}
	if len(parts) == 3 {
		f, err := parseFilter(parts[2])
		if err != nil {
			return Query{}, fmt.Errorf("query %q: %w: %s", s, err, QuerySyntax)
		}
		q.Filter = f
	}
	return q, nil
}

func parseFilter(s string) (*Filter, error) {
	column, rest, ok1 := strings.Cut(s, ".")
	op, value, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || column == "" {
		return nil, fmt.Errorf("filter %q is not <column>.<op>.<value>", s)
	}
	if !ops[op] {
		return nil, fmt.Errorf("filter %q: unknown op %q", s, op)
	}
	f := &Filter{Column: column, Op: op, Values: []string{value}}
	if op == "in" {
		inner, ok := strings.CutPrefix(value, "(")
		inner, ok2 := strings.CutSuffix(inner, ")")
		if !ok || !ok2 {
			return nil, fmt.Errorf("filter %q: in takes a list in parentheses, such as %s.in.(a,b)", s, column)
		}
		f.Values = strings.Split(inner, ",")
	}
	return f, nil
}

// Resolve finds the tracked table the query names. A name without a schema
// is public's table of that name, or else the one tracked table of that
// name in any schema. The error names the tracked tables.
func (q *Query) Resolve(tracked []outbox.Table) error {
	names := make([]string, len(tracked))
	for i, t := range tracked {
		names[i] = t.Schema + "." + t.Name
	}
	list := "no table is tracked yet (SELECT pg2kafka.setup(…))"
	if len(names) > 0 {
		list = "tracked tables: " + strings.Join(names, ", ")
	}
	if q.Table.Schema != "" {
		for _, t := range tracked {
			if t == q.Table {
				return nil
			}
		}
		return fmt.Errorf("table %s is not tracked; %s", q.Table.Schema+"."+q.Table.Name, list)
	}
	var found []outbox.Table
	for _, t := range tracked {
		if t.Name == q.Table.Name {
			if t.Schema == "public" {
				q.Table = t
				return nil
			}
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return fmt.Errorf("table %s is not tracked; %s", q.Table.Name, list)
	case 1:
		q.Table = found[0]
		return nil
	}
	return fmt.Errorf("table %s is tracked in several schemas; name one of them as schema.table: %s", q.Table.Name, list)
}

// Match reports whether the event is one the query shows; data is the
// event's data parsed by parseData, or nil to have Match parse it.
func (q *Query) Match(e *outbox.Event, data map[string]json.RawMessage) bool {
	if e.TableName != q.Table.Name || e.TableSchema != q.Table.Schema {
		return false
	}
	if q.Statements != nil && q.Statements[0] != e.Statement {
		return false
	}
	if q.Filter == nil {
		return true
	}
	if data == nil {
		data = parseData(e.Data)
	}
	v, ok := data[q.Filter.Column]
	if !ok && q.Filter.Column == "external_id" {
		v, ok = json.RawMessage("null"), true
		if e.ExternalID != nil {
			v, _ = json.Marshal(*e.ExternalID)
		}
	}
	if !ok {
		return false // an UPDATE's data holds the changed columns only
	}
	return q.Filter.match(v)
}

// parseData parses an event's data into its columns; data that is not an
// object has none.
func parseData(raw []byte) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || m == nil {
		return map[string]json.RawMessage{}
	}
	return m
}

// match compares a column's JSON value with the filter's: as numbers when
// both are numbers, as text otherwise, a JSON string by its contents and
// null, true, false, objects and arrays by their JSON text.
func (f *Filter) match(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	var text string
	var num *big.Rat
	switch {
	case len(v) > 0 && v[0] == '"':
		if json.Unmarshal(v, &text) != nil {
			return false
		}
	case len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9'):
		text = string(v)
		num = parseNumber(text)
	default:
		var compact bytes.Buffer
		if json.Compact(&compact, v) != nil {
			return false
		}
		text = compact.String()
	}
	for _, want := range f.Values {
		c := compare(text, num, want)
		var ok bool
		switch f.Op {
		case "eq", "in":
			ok = c == 0
		case "neq":
			ok = c != 0
		case "lt":
			ok = c < 0
		case "lte":
			ok = c <= 0
		case "gt":
			ok = c > 0
		case "gte":
			ok = c >= 0
		}
		if ok {
			return true
		}
	}
	return false
}

func compare(text string, num *big.Rat, want string) int {
	if num != nil {
		if w := parseNumber(want); w != nil {
			return num.Cmp(w)
		}
	}
	return strings.Compare(text, want)
}

// parseNumber parses a decimal number exactly, so that numeric columns
// compare without rounding; an exponent goes through float64, since 1e999999
// would otherwise be a million-digit integer. It returns nil for anything
// else.
func parseNumber(s string) *big.Rat {
	if s == "" || strings.ContainsAny(s, "/xXoObBpP_") {
		return nil // forms big.Rat reads that JSON does not have
	}
	if strings.ContainsAny(s, "eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil
		}
		return new(big.Rat).SetFloat64(f)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil
	}
	return r
}
