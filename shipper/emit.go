package shipper

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"unicode/utf16"
	"unicode/utf8"

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

// appendUnquoted appends the text of the JSON string s. It is the inverse of
// jsonb's printing of a string, which escapes '"', '\\' and the control
// characters only; it takes every escape JSON allows.
func appendUnquoted(dst, s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return dst, false
	}
	s = s[1 : len(s)-1]
	for len(s) > 0 {
		i := bytes.IndexAny(s, "\\\"")
		if i < 0 {
			return append(dst, s...), true
		}
		dst = append(dst, s[:i]...)
		s = s[i:]
		if s[0] == '"' || len(s) < 2 {
			return dst, false // an unescaped quote, or a lone backslash at the end
		}
		c := s[1]
		s = s[2:]
		switch c {
		case '"', '\\', '/':
			dst = append(dst, c)
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, ok := hex4(s)
			if !ok {
				return dst, false
			}
			s = s[4:]
			if utf16.IsSurrogate(r) {
				// The second half must follow as \uXXXX; alone, a half is
				// no character, and becomes U+FFFD as in encoding/json.
				if r2, ok := hex4(s[min(2, len(s)):]); ok && len(s) >= 6 && s[0] == '\\' && s[1] == 'u' {
					if pair := utf16.DecodeRune(r, r2); pair != utf8.RuneError {
						r = pair
						s = s[6:]
					} else {
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return dst, false
		}
	}
	return dst, true
}

// hex4 reads the four hex digits of a \u escape.
func hex4(s []byte) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
