package shipper

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Format is the shape of a record's value: pg2kafka's own event, or the
// payload of a tool whose consumers should keep working unchanged. It is the
// value for every destination; the key, topic, timestamp and headers are the
// same whatever the format.
type Format uint8

const (
	// FormatPg2kafka is pg2kafka's event (see appendEvent). The default.
	FormatPg2kafka Format = iota
	// FormatDebezium is the value of Debezium's PostgreSQL connector, as
	// its JsonConverter writes it with schemas.enable=false:
	//
	//	{"before":{…}|null,"after":{…}|null,"source":{…},"op":"c"|"u"|"d"|"r","ts_ms":…}
	FormatDebezium
	// FormatHasura is the body of a Hasura event trigger's request:
	//
	//	{"event":{"op":…,"data":{"old":…,"new":…},"session_variables":null},"created_at":…,"id":…,
	//	 "delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":<topic>},"table":{"schema":…,"name":…}}
	FormatHasura
	// FormatSkor is skor's request body:
	//
	//	{"data":{…},"table":"users","op":"INSERT"|"UPDATE"|"DELETE"}
	FormatSkor
	// FormatPgevents is pgevents' message:
	//
	//	{"table_name":"public.users","old":{…},"new":{…},"id":1,"diff":{…},"action":"I"|"U"|"D"}
	FormatPgevents
)

var formatNames = [...]string{"pg2kafka", "debezium", "hasura", "skor", "pgevents"}

func (f Format) String() string {
	if int(f) < len(formatNames) {
		return formatNames[f]
	}
	return "Format(" + strconv.Itoa(int(f)) + ")"
}

// FormatNames lists the formats ParseFormat accepts.
func FormatNames() []string { return formatNames[:] }

// ParseFormat returns the format named s (in any case).
func ParseFormat(s string) (Format, error) {
	for i, name := range formatNames {
		if strings.EqualFold(s, name) {
			return Format(i), nil
		}
	}
	return 0, fmt.Errorf("unknown event format %q: must be one of %s", s, strings.Join(formatNames[:], ", "))
}

// statementEvent is the statement of an event the application emitted with
// pg2kafka.emit(): its value is its payload whatever the format, since it is
// not a row change that another tool's shape could describe.
const statementEvent = "EVENT"

// formatter builds the values of one batch in a format other than
// pg2kafka's. Each value is built in one pass over the event: data and old
// are copied from Postgres' text as they came, compacted, and are only
// walked, never decoded, where the format needs something from inside them
// (pgevents' id and diff).
type formatter struct {
	format Format
	// database names the connector and the database in Debezium's source.
	database string
	// version is Debezium's source.version: pg2kafka-<version>.
	version string
	// shippedMs is when the batch was encoded, in Unix milliseconds: the
	// ts_ms of Debezium's envelope.
	shippedMs int64
	// keyColumn returns the JSON-quoted name of a table's key column, or
	// nil when it is not known; for pgevents' id.
	keyColumn func(outbox.Table) []byte
	// lastTable and lastKey remember keyColumn's last answer: a batch's
	// events mostly come from few tables.
	lastTable outbox.Table
	lastKey   []byte
	lastKnown bool
}

// appendValue appends e's value in f's format; topic is the record's
// topic, which Hasura's format names the trigger by.
func (f *formatter) appendValue(dst []byte, e *outbox.Event, topic string) []byte {
	switch f.format {
	case FormatDebezium:
		return f.appendDebezium(dst, e)
	case FormatHasura:
		return appendHasura(dst, e, topic)
	case FormatSkor:
		return appendSkor(dst, e)
	case FormatPgevents:
		return f.appendPgevents(dst, e)
	}
	return appendEvent(dst, e)
}

func (f *formatter) appendDebezium(dst []byte, e *outbox.Event) []byte {
	var op byte
	switch e.Statement {
	case "INSERT":
		op = 'c'
	case "UPDATE":
		op = 'u'
	case "DELETE":
		op = 'd'
	default: // SNAPSHOT
		op = 'r'
	}
	dst = append(dst, `{"before":`...)
	if op == 'u' || op == 'd' {
		dst = appendJSONBOrNull(dst, e.Old)
	} else {
		dst = append(dst, "null"...)
	}
	dst = append(dst, `,"after":`...)
	if op == 'd' {
		dst = append(dst, "null"...)
	} else {
		dst = appendCompactJSONB(dst, e.Data)
	}
	dst = append(dst, `,"source":{"version":`...)
	dst = appendJSONString(dst, f.version)
	dst = append(dst, `,"connector":"postgresql","name":`...)
	dst = appendJSONString(dst, f.database)
	dst = append(dst, `,"ts_ms":`...)
	dst = strconv.AppendInt(dst, e.CreatedAt.UnixMilli(), 10)
	if op == 'r' {
		dst = append(dst, `,"snapshot":"true","db":`...)
	} else {
		dst = append(dst, `,"snapshot":"false","db":`...)
	}
	dst = appendJSONString(dst, f.database)
	dst = append(dst, `,"schema":`...)
	dst = appendJSONString(dst, e.TableSchema)
	dst = append(dst, `,"table":`...)
	dst = appendJSONString(dst, e.TableName)
	dst = append(dst, `,"txId":null,"lsn":null},"op":"`...)
	dst = append(dst, op)
	dst = append(dst, `","ts_ms":`...)
	dst = strconv.AppendInt(dst, f.shippedMs, 10)
	return append(dst, '}')
}

func appendHasura(dst []byte, e *outbox.Event, topic string) []byte {
	dst = append(dst, `{"event":{"op":"`...)
	switch e.Statement {
	case "INSERT":
		dst = append(dst, `INSERT","data":{"old":null,"new":`...)
		dst = appendCompactJSONB(dst, e.Data)
	case "UPDATE":
		dst = append(dst, `UPDATE","data":{"old":`...)
		dst = appendJSONBOrNull(dst, e.Old)
		dst = append(dst, `,"new":`...)
		dst = appendCompactJSONB(dst, e.Data)
	case "DELETE":
		dst = append(dst, `DELETE","data":{"old":`...)
		dst = appendJSONBOrNull(dst, e.Old)
		dst = append(dst, `,"new":null`...)
	default: // SNAPSHOT: what Hasura sends for an event invoked by hand
		dst = append(dst, `MANUAL","data":{"old":null,"new":`...)
		dst = appendCompactJSONB(dst, e.Data)
	}
	dst = append(dst, `},"session_variables":null},"created_at":"`...)
	dst = e.CreatedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","id":"`...)
	dst = appendUUID(dst, e.UUID)
	dst = append(dst, `","delivery_info":{"max_retries":0,"current_retry":0},"trigger":{"name":`...)
	dst = appendJSONString(dst, topic)
	dst = append(dst, `},"table":{"schema":`...)
	dst = appendJSONString(dst, e.TableSchema)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, e.TableName)
	return append(dst, `}}`...)
}

func appendSkor(dst []byte, e *outbox.Event) []byte {
	dst = append(dst, `{"data":`...)
	if e.Statement == "DELETE" {
		// skor sent the deleted row; without whole rows it is not known.
		if e.Old != nil {
			dst = appendCompactJSONB(dst, e.Old)
		} else {
			dst = append(dst, "{}"...)
		}
	} else {
		dst = appendCompactJSONB(dst, e.Data)
	}
	// skor named the table by TG_TABLE_NAME: unqualified. Outside public the
	// schema is added, so that two schemas' tables stay apart.
	dst = append(dst, `,"table":"`...)
	if e.TableSchema != "public" {
		dst = appendJSONStringBody(dst, e.TableSchema)
		dst = append(dst, '.')
	}
	dst = appendJSONStringBody(dst, e.TableName)
	dst = append(dst, `","op":"`...)
	if e.Statement == "SNAPSHOT" {
		dst = append(dst, "INSERT"...)
	} else {
		dst = append(dst, e.Statement...)
	}
	return append(dst, `"}`...)
}

func (f *formatter) appendPgevents(dst []byte, e *outbox.Event) []byte {
	dst = append(dst, `{"table_name":"`...)
	dst = appendJSONStringBody(dst, e.TableSchema)
	dst = append(dst, '.')
	dst = appendJSONStringBody(dst, e.TableName)
	dst = append(dst, `","old":`...)
	var row []byte    // where the key column's value is looked up
	var newRow []byte // the compacted "new" of an insert, which is its diff too
	var action byte
	switch e.Statement {
	case "UPDATE":
		action = 'U'
		dst = appendJSONBOrEmpty(dst, e.Old)
		dst = append(dst, `,"new":`...)
		dst = appendCompactJSONB(dst, e.Data)
		row = e.Data
	case "DELETE":
		action = 'D'
		dst = appendJSONBOrEmpty(dst, e.Old)
		dst = append(dst, `,"new":{}`...)
		row = e.Old
	default: // INSERT, SNAPSHOT
		action = 'I'
		dst = append(dst, `{},"new":`...)
		newStart := len(dst)
		dst = appendCompactJSONB(dst, e.Data)
		newRow = dst[newStart:len(dst):len(dst)]
		row = e.Data
	}
	dst = append(dst, `,"id":`...)
	dst = f.appendPgeventsID(dst, e, row)
	dst = append(dst, `,"diff":`...)
	switch action {
	case 'U':
		dst = appendDiff(dst, e.Data, e.Old)
	case 'D':
		dst = append(dst, "{}"...)
	default:
		dst = append(dst, newRow...)
	}
	dst = append(dst, `,"action":"`...)
	dst = append(dst, action)
	return append(dst, `"}`...)
}

// appendPgeventsID appends the value of the table's key column as the row
// holds it, its JSON type kept; failing that (the column left out by the
// columns option, or not in an UPDATE's changed columns), the external ID,
// a string.
func (f *formatter) appendPgeventsID(dst []byte, e *outbox.Event, row []byte) []byte {
	if f.keyColumn != nil {
		if t := e.Table(); !f.lastKnown || t != f.lastTable {
			f.lastTable, f.lastKey, f.lastKnown = t, f.keyColumn(t), true
		}
		if key := f.lastKey; key != nil {
			if v := memberValue(row, key); v != nil {
				return appendCompactJSONB(dst, v)
			}
			if e.Statement == "UPDATE" {
				if v := memberValue(e.Old, key); v != nil {
					return appendCompactJSONB(dst, v)
				}
			}
		}
	}
	if e.ExternalID == nil {
		return append(dst, "null"...)
	}
	return appendJSONString(dst, *e.ExternalID)
}

// appendDiff appends the members of data whose values differ from those of
// old (all of data when old is nil). Without whole rows, data holds only the
// changed columns, and that is the diff.
func appendDiff(dst, data, old []byte) []byte {
	if old == nil {
		return appendCompactJSONB(dst, data)
	}
	dst = append(dst, '{')
	first := true
	// Both rows come from one table in jsonb's key order, so the old value
	// is nearly always the next member of old; a search covers the rest.
	oi := 0
	for di := 0; ; {
		key, value, next, ok := nextMember(data, di)
		if !ok {
			break
		}
		di = next
		okey, ovalue, onext, ook := nextMember(old, oi)
		if ook && bytes.Equal(okey, key) {
			oi = onext
		} else {
			ovalue = memberValue(old, key)
		}
		if ovalue != nil && bytes.Equal(ovalue, value) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, key...)
		dst = append(dst, ':')
		dst = appendCompactJSONB(dst, value)
	}
	return append(dst, '}')
}

// memberValue returns the value of the member of the jsonb object obj
// whose key, in its quoted form, is key; nil if there is none.
func memberValue(obj, key []byte) []byte {
	for i := 0; ; {
		k, v, next, ok := nextMember(obj, i)
		if !ok {
			return nil
		}
		if bytes.Equal(k, key) {
			return v
		}
		i = next
	}
}

// nextMember reads the member of the jsonb object text obj that starts at
// or after i (0 for the first): its key, quoted as it stands, and its value's
// text, and where to look for the one after. obj is Postgres' own output,
// so it is well formed; anything else ends the walk.
func nextMember(obj []byte, i int) (key, value []byte, next int, ok bool) {
	// Skip the opening brace or the comma, and spaces.
	for i < len(obj) && (obj[i] == '{' || obj[i] == ',' || obj[i] == ' ') {
		i++
	}
	if i >= len(obj) || obj[i] != '"' {
		return nil, nil, 0, false
	}
	end := skipString(obj, i)
	key = obj[i:end]
	i = end
	for i < len(obj) && (obj[i] == ':' || obj[i] == ' ') {
		i++
	}
	start := i
	depth := 0
	for i < len(obj) {
		switch c := obj[i]; c {
		case '"':
			i = skipString(obj, i)
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return key, obj[start:i], i, true
			}
			depth--
		case ',':
			if depth == 0 {
				return key, obj[start:i], i, true
			}
		}
		i++
	}
	return nil, nil, 0, false
}

// skipString returns the index just after the JSON string starting at i.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

func appendJSONBOrNull(dst, src []byte) []byte {
	if src == nil {
		return append(dst, "null"...)
	}
	return appendCompactJSONB(dst, src)
}

func appendJSONBOrEmpty(dst, src []byte) []byte {
	if src == nil {
		return append(dst, "{}"...)
	}
	return appendCompactJSONB(dst, src)
}

// appendJSONStringBody appends s as the inside of a JSON string, without
// the quotes.
func appendJSONStringBody(dst []byte, s string) []byte {
	if !needsEscape(s) {
		return append(dst, s...)
	}
	quoted := appendJSONString(nil, s)
	return append(dst, quoted[1:len(quoted)-1]...)
}

// buildVersion is the version of the running binary, from its build
// information: a module version for a release, else "dev".
func buildVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return strings.TrimPrefix(info.Main.Version, "v")
	}
	return "dev"
}

// missingForFormat says what of format's payload a table's options leave
// out, or "" if nothing: every format but pg2kafka's describes a change by
// whole rows, which need full_row.
func missingForFormat(format Format, t *outbox.TrackedTable) string {
	if format == FormatPg2kafka || t.FullRow || !(t.Captures("UPDATE") || t.Captures("DELETE")) {
		return ""
	}
	switch format {
	case FormatDebezium:
		return `"before" is null (or only the changed columns' previous values) and an UPDATE's "after" holds only the changed columns`
	case FormatHasura:
		return `"old" is null (or only the changed columns' previous values) and an UPDATE's "new" holds only the changed columns`
	case FormatSkor:
		return `an UPDATE's "data" holds only the changed columns and a DELETE's "data" is {} (or the row, with include_old)`
	case FormatPgevents:
		return `"old" is {} (or only the changed columns' previous values) and an UPDATE's "new" holds only the changed columns`
	}
	return ""
}

// completingSetup is the setup() call that gives t whole rows and keeps
// its other options.
func completingSetup(t *outbox.TrackedTable) string {
	var b strings.Builder
	relation := quoteIdent(t.Name)
	if t.Schema != "public" {
		relation = quoteIdent(t.Schema) + "." + relation
	}
	fmt.Fprintf(&b, "SELECT pg2kafka.setup(%s, %s", sqlLiteral(relation), sqlLiteral(t.KeyColumn))
	if strings.Join(t.Operations, ",") != "INSERT,UPDATE,DELETE" {
		fmt.Fprintf(&b, ", operations => %s", sqlLiteral("{"+strings.Join(t.Operations, ",")+"}"))
	}
	if t.Columns != nil {
		quoted := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			quoted[i] = `"` + strings.ReplaceAll(strings.ReplaceAll(c, `\`, `\\`), `"`, `\"`) + `"`
		}
		fmt.Fprintf(&b, ", columns => %s", sqlLiteral("{"+strings.Join(quoted, ",")+"}"))
	}
	if t.IncludeOld {
		b.WriteString(", include_old => true")
	}
	if t.Filter != "" {
		fmt.Fprintf(&b, ", filter => %s", sqlLiteral(t.Filter))
	}
	if t.Topic != "" {
		fmt.Fprintf(&b, ", topic => %s", sqlLiteral(t.Topic))
	}
	b.WriteString(", full_row => true)")
	return b.String()
}

// quoteIdent quotes an SQL identifier unless it is one that needs no
// quotes (lower case letters, digits and underscores).
func quoteIdent(s string) string {
	plain := s != ""
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// sqlLiteral quotes s as an SQL string literal, for a statement shown to an
// operator.
func sqlLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// tables is the registry of tracked tables as the shipper last read it,
// shared by its workers: for pgevents' id (the key column) and the format's
// warnings.
type tables struct {
	queue *outbox.Queue

	mu       sync.Mutex
	byTable  map[outbox.Table]trackedEntry
	loadedAt time.Time
}

type trackedEntry struct {
	// keyColumn is the key column's name, JSON-quoted, as jsonb's text
	// writes the member's key.
	keyColumn []byte
}

// minRegistryReload is how often, at most, a batch holding events of a
// table the registry does not know reads the registry again.
const minRegistryReload = time.Second

// load reads the registry and returns its tables.
func (r *tables) load(ctx context.Context) ([]outbox.TrackedTable, error) {
	tracked, err := r.queue.TrackedTables(ctx)
	if err != nil {
		return nil, err
	}
	byTable := make(map[outbox.Table]trackedEntry, len(tracked))
	for i := range tracked {
		t := &tracked[i]
		byTable[t.Table()] = trackedEntry{keyColumn: appendJSONString(nil, t.KeyColumn)}
	}
	r.mu.Lock()
	r.byTable, r.loadedAt = byTable, time.Now()
	r.mu.Unlock()
	return tracked, nil
}

// cover makes sure the registry knows the tables of events, reading it
// again (at most once per minRegistryReload) when it does not.
func (r *tables) cover(ctx context.Context, events []outbox.Event) error {
	r.mu.Lock()
	known, recent := r.byTable, time.Since(r.loadedAt) < minRegistryReload
	r.mu.Unlock()
	if recent && known != nil {
		return nil
	}
	for i := range events {
		if events[i].Statement == statementEvent {
			continue
		}
		if _, ok := known[events[i].Table()]; !ok {
			_, err := r.load(ctx)
			return err
		}
	}
	return nil
}

// keyColumn returns the quoted name of t's key column, nil if t is not
// known.
func (r *tables) keyColumn(t outbox.Table) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byTable[t].keyColumn
}

// warnIncomplete reads the registry and logs, once per table, the tables
// whose options leave format's payload incomplete, with the setup() call
// that completes it.
func (r *tables) warnIncomplete(ctx context.Context, format Format, logger *slog.Logger) {
	tracked, err := r.load(ctx)
	if err != nil {
		logger.Warn("could not check that the tracked tables' options suit EVENT_FORMAT", slog.String("event_format", format.String()), slog.Any("error", err))
		return
	}
	for i := range tracked {
		t := &tracked[i]
		if missing := missingForFormat(format, t); missing != "" {
			logger.Warn("table's events are incomplete in EVENT_FORMAT "+format.String()+": "+missing,
				slog.String("table", t.Schema+"."+t.Name),
				slog.String("event_format", format.String()),
				slog.String("fix", completingSetup(t)))
		}
	}
}
