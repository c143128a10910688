package shipper

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// encodeEmitted encodes an event of pg2kafka.emit() as the record the
// application asked for: its topic, its key, its payload as the value, no
// envelope, and its headers after pg2kafka's event id and statement. The
// value and the headers' values are appended to arena, which it returns.
func (w *worker) encodeEmitted(arena []byte, e *outbox.Event) (Message, []byte) {
	// The application chose the topic: a destination that routes by it
	// (RabbitMQ's routing key) uses it as it is.
	m := Message{Timestamp: e.CreatedAt, TopicChosen: true}
	if e.Topic != nil {
		m.Topic = *e.Topic
	}
	if e.ExternalID != nil {
		start := len(arena)
		arena = append(arena, *e.ExternalID...)
		m.Key = arena[start:len(arena):len(arena)]
	}

	start := len(arena)
	if len(e.Data) > 0 && e.Data[0] == '"' {
		// A JSON string holds the payload's exact text.
		var ok bool
		if arena, ok = appendUnquoted(arena, e.Data); !ok {
			// Only a row written by hand, not by emit(), can get here:
			// it ships as it is rather than not at all.
			arena = append(arena[:start], e.Data...)
			w.logger.Warn("emitted event's data is not a JSON string as jsonb prints it; shipping it as it is",
				slog.Int64("event_id", e.ID), slog.String("topic", m.Topic))
		}
	} else {
		arena = appendCompactJSONB(arena, e.Data)
	}
	m.Value = arena[start:len(arena):len(arena)]

	start = len(arena)
	arena = appendUUID(arena, e.UUID)
	m.Headers = append(make([]Header, 0, 4), Header{HeaderEventID, arena[start:len(arena):len(arena)]},
		Header{HeaderStatement, statementValues[outbox.StatementEvent]})
	if e.Old != nil {
		headers, err := emittedHeaders(e.Old)
		if err != nil {
			w.logger.Warn("emitted event's headers are not a JSON object of strings; shipping it without them",
				slog.Int64("event_id", e.ID), slog.String("topic", m.Topic), slog.Any("error", err))
		}
		m.Headers = append(m.Headers, headers...)
	}
	return m, arena
}

// emittedHeaders decodes the headers emit() stored, a JSON object of
// strings, in its order (jsonb's: shorter keys first).
func emittedHeaders(object []byte) ([]Header, error) {
	dec := json.NewDecoder(bytes.NewReader(object))
	if _, err := dec.Token(); err != nil { // {
		return nil, err
	}
	var out []Header
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, err
		}
		v, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := k.(string)
		value, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("the value of header %q is %v, not a string", key, v)
		}
		out = append(out, Header{Key: key, Value: []byte(value)})
	}
	return out, nil
}

// appendUnquoted appends the text of the JSON string s, and reports false
// if s is not one.
func appendUnquoted(dst, s []byte) ([]byte, bool) {
	var text string
	if len(s) == 0 || s[0] != '"' || json.Unmarshal(s, &text) != nil {
		return dst, false
	}
	return append(dst, text...), true
}
