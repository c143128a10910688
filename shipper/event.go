package shipper

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// appendEvent appends the event in the JSON format of the original pg2kafka:
//
//	{"uuid":"…","external_id":"…","statement":"INSERT","data":{…},"created_at":"2017-11-02T16:15:13.94077Z"}
//
// with "old":{…} after data for the UPDATE and DELETE events of a table set
// up with include_old. data and old are copied from Postgres as they came,
// only compacted (jsonb prints a space after every colon and comma), never
// decoded. The uuid is at uuidOffset.
func appendEvent(dst []byte, e *outbox.Event) []byte {
	dst = append(dst, `{"uuid":"`...)
	dst = appendUUID(dst, e.UUID)
	dst = append(dst, `","external_id":`...)
	if e.ExternalID == nil {
		dst = append(dst, "null"...)
	} else {
		dst = appendJSONString(dst, *e.ExternalID)
	}
	dst = append(dst, `,"statement":`...)
	dst = appendJSONString(dst, e.Statement)
	dst = append(dst, `,"data":`...)
	dst = appendCompactJSONB(dst, e.Data)
	if e.Old != nil {
		dst = append(dst, `,"old":`...)
		dst = appendCompactJSONB(dst, e.Old)
	}
	dst = append(dst, `,"created_at":"`...)
	dst = e.CreatedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// uuidOffset is where the event's uuid, 36 bytes of text, begins in what
// appendEvent appends.
const uuidOffset = len(`{"uuid":"`)

// The headers of every record. An event of pg2kafka.emit() carries the
// first two, then its own.
const (
	// HeaderEventID is the event's uuid, the same in every copy of the
	// event that at-least-once delivery may produce.
	HeaderEventID = "pg2kafka-event-id"
	// HeaderStatement is INSERT, UPDATE, DELETE or SNAPSHOT, or EVENT for
	// an event of pg2kafka.emit().
	HeaderStatement = "pg2kafka-statement"
	// HeaderTable is the event's table as schema.table, the names as
	// setup() recorded them, unquoted.
	HeaderTable = "pg2kafka-table"
)

// statementValues are the values of HeaderStatement, shared by every
// record rather than allocated for each.
var statementValues = map[string][]byte{
	"INSERT":   []byte("INSERT"),
	"UPDATE":   []byte("UPDATE"),
	"DELETE":   []byte("DELETE"),
	"SNAPSHOT": []byte("SNAPSHOT"),
	"EVENT":    []byte("EVENT"),
}

// appendCompactJSONB appends jsonb's text form without the space jsonb
// prints after each colon and comma between tokens. That form is
// Postgres' own output, always valid and otherwise without whitespace, so
// this is all the compaction it needs; json.Compact would parse and check
// every byte again, the largest cost of encoding an event. Strings, most of
// the bytes, are skipped whole.
func appendCompactJSONB(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case '"':
			for {
				j := bytes.IndexAny(src[i+1:], `"\`)
				if j < 0 {
					return append(dst, src[start:]...)
				}
				i += 1 + j
				if src[i] == '"' {
					break
				}
				i++ // the escaped character
			}
		case ',', ':':
			if i+1 < len(src) && src[i+1] == ' ' {
				dst = append(dst, src[start:i+1]...)
				i++
				start = i + 1
			}
		}
	}
	return append(dst, src[start:]...)
}

// appendUUID appends u in its canonical 8-4-4-4-12 hex form.
func appendUUID(dst []byte, u [16]byte) []byte {
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], u[10:])
	return append(dst, buf[:]...)
}

// appendJSONString appends s as a JSON string. Unlike json.Marshal it leaves
// <, > and & alone: the value is not HTML, and the external_id in the value
// should read exactly like the record key.
func appendJSONString(dst []byte, s string) []byte {
	if !needsEscape(s) {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(dst, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return true
		}
	}
	return false
}

// maxTopicLength is Kafka's limit on topic names.
const maxTopicLength = 249

// TopicName returns the topic of a table's events:
// pg2kafka[.namespace].database[.schema].table, the schema only when it is
// not public. Characters Kafka does not allow in topic names (anything but
// ASCII letters, digits, '.', '_' and '-') become '_'. A name longer than
// Kafka allows is cut, and the cut is marked with a hash of the whole name so
// that two long names do not meet on one topic.
func TopicName(namespace, database string, table outbox.Table) string {
	parts := make([]string, 0, 5)
	parts = append(parts, "pg2kafka")
	if namespace != "" {
		parts = append(parts, namespace)
	}
	parts = append(parts, database)
	if table.Schema != "public" {
		parts = append(parts, table.Schema)
	}
	parts = append(parts, table.Name)
	topic := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, strings.Join(parts, "."))
	if len(topic) > maxTopicLength {
		h := fnv.New32a()
		h.Write([]byte(topic))
		topic = fmt.Sprintf("%s-%08x", topic[:maxTopicLength-9], h.Sum32())
	}
	return topic
}
