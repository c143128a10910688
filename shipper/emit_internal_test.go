package shipper

import (
	"bytes"
	"testing"
)

func TestAppendUnquoted(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{`"{\"type\":\"OrderPaid\", \"order\":42}"`, `{"type":"OrderPaid", "order":42}`, true},
		{`" [1,\n 2]\t\r\b\f\\\/ "`, " [1,\n 2]\t\r\b\f\\/ ", true},
		{`"\u0001\u001F é \ud83d\ude00"`, "\x01\x1f é 😀", true},
		{`"\ud83d alone"`, "\uFFFD alone", true},
		{`""`, ``, true},
		{`"unterminated`, ``, false},
		{`"a"b"`, ``, false},
		{`"\x"`, ``, false},
		{`"\u12"`, ``, false},
		{`{"a":1}`, ``, false},
	} {
		got, ok := appendUnquoted([]byte("prefix "), []byte(tt.in))
		if ok != tt.ok || (ok && string(got) != "prefix "+tt.want) {
			t.Errorf("appendUnquoted(%s) = %q, %v; want %q, %v", tt.in, got, ok, "prefix "+tt.want, tt.ok)
		}
	}
}

func TestEmittedHeaders(t *testing.T) {
	t.Parallel()
	got, err := emittedHeaders([]byte(`{"a": "1", "event-type": "OrderPaid", "q": "say \"hi\""}`))
	want := []Header{{"a", []byte("1")}, {"event-type", []byte("OrderPaid")}, {"q", []byte(`say "hi"`)}}
	if err != nil || len(got) != len(want) {
		t.Fatalf("emittedHeaders = %q, %v; want %q", got, err, want)
	}
	for i := range want {
		if got[i].Key != want[i].Key || !bytes.Equal(got[i].Value, want[i].Value) {
			t.Errorf("header %d = %s: %s, want %s: %s", i, got[i].Key, got[i].Value, want[i].Key, want[i].Value)
		}
	}
	if _, err := emittedHeaders([]byte(`{"attempt": 3}`)); err == nil {
		t.Error("emittedHeaders accepted a number")
	}
}
