package shipper

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/uuid"
)

// jsonbStyle spaces compact JSON the way Postgres prints jsonb: one space
// after every colon and comma between tokens.
func jsonbStyle(compact []byte) []byte {
	var out []byte
	inString, escaped := false, false
	for _, c := range compact {
		out = append(out, c)
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString && c == '"':
			inString = false
		case !inString && c == '"':
			inString = true
		case !inString && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return out
}

func TestAppendCompactJSONB(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{`{"id": 1, "tags": ["a", "b"], "price": 9.50}`, `{"id":1,"tags":["a","b"],"price":9.50}`},
		{`{"s": "a, b: c", "q": "say \"hi\", ok", "e": "\\", "n": null}`, `{"s":"a, b: c","q":"say \"hi\", ok","e":"\\","n":null}`},
		{`{}`, `{}`},
		{`[{"a": {"b": []}}, "x: y"]`, `[{"a":{"b":[]}},"x: y"]`},
	} {
		if got := appendCompactJSONB([]byte("prefix "), []byte(tt.in)); string(got) != "prefix "+tt.want {
			t.Errorf("appendCompactJSONB(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzAppendCompactJSONB checks that compacting jsonb's spacing gives what
// json.Compact gives, for any JSON.
func FuzzAppendCompactJSONB(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `["x, y: z","\"",{"k\\":[1,2.5e3,true,null]}]`, `"é\u2028"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var want bytes.Buffer
		if json.Compact(&want, []byte(in)) != nil {
			t.Skip()
		}
		spaced := jsonbStyle(want.Bytes())
		if got := appendCompactJSONB(nil, spaced); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("appendCompactJSONB(%s) = %s, want %s", spaced, got, want.Bytes())
		}
	})
}

func TestAppendUUID(t *testing.T) {
	t.Parallel()
	for range 100 {
		u := uuid.New()
		if got := appendUUID(nil, u); string(got) != u.String() {
			t.Fatalf("appendUUID = %s, want %s", got, u)
		}
	}
}
