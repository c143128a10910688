package webhook

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Config is a webhook sink's settings. Zero values take the defaults stated.
type Config struct {
	// URL is where events are POSTed (WEBHOOK_URL). {schema}, {table} and
	// {topic} in it are replaced by each event's schema, table and topic
	// (the table's setup(topic => …), else its Kafka topic), path-escaped,
	// so that tables can go to different endpoints. http:// or https://.
	// Required.
	URL string
	// Headers are added to every request (WEBHOOK_HEADERS), such as
	// Authorization. They are secrets: never logged, never in an error.
	// Default: none.
	Headers http.Header
	// Timeout bounds one request, from sending it to reading the answer's
	// status (WEBHOOK_TIMEOUT). Default 10s.
	Timeout time.Duration
	// CAFile is a PEM file of the CAs trusted to sign the endpoint's
	// certificate instead of the system's (WEBHOOK_CA_FILE). Certificates
	// are always verified. Default: the system's roots.
	CAFile string
	// Secret signs every request the Standard Webhooks way
	// (WEBHOOK_SECRET): whsec_<base64 key>, or any other text used as the
	// key itself. Default "": requests carry no webhook-signature.
	Secret string
	// BatchSize is the most events POSTed in one request (WEBHOOK_BATCH_SIZE),
	// 1 to 1000. Above 1 the body is a JSON array of the events of one
	// endpoint, in queue order, even when it holds one. Default 1: the body
	// is the event itself.
	BatchSize int
	// Concurrency is the most requests in flight to one endpoint at once
	// (WEBHOOK_CONCURRENCY), 1 to 1024; a key never has two. Default 16.
	Concurrency int
}

// Limits of Config's numbers.
const (
	MaxBatchSize   = 1000
	MaxConcurrency = 1024
)

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	return c
}

// Validate reports the first setting that cannot work, naming its variable,
// what is wrong and what is allowed. Zero values are valid: they take the
// defaults.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("WEBHOOK_URL is not set: give the endpoint, e.g. WEBHOOK_URL=https://example.com/hooks/{table}")
	}
	if _, err := parseTemplate(c.URL); err != nil {
		return err
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		return fmt.Errorf("WEBHOOK_BATCH_SIZE=%d: must be a whole number from 1 to %d", c.BatchSize, MaxBatchSize)
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		return fmt.Errorf("WEBHOOK_CONCURRENCY=%d: must be a whole number from 1 to %d", c.Concurrency, MaxConcurrency)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("WEBHOOK_TIMEOUT=%v: must be a positive duration such as 10s", c.Timeout)
	}
	if _, err := signingKey(c.Secret); err != nil {
		return err
	}
	for name := range c.Headers {
		if reserved(name) {
			return fmt.Errorf("WEBHOOK_HEADERS sets %s, which pg2kafka sets itself on every request: leave it out", name)
		}
	}
	return nil
}

// reserved reports whether pg2kafka sets header name itself.
func reserved(name string) bool {
	switch strings.ToLower(name) {
	case "content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature":
		return true
	}
	return strings.HasPrefix(strings.ToLower(name), "pg2kafka-")
}

// ParseHeaders reads WEBHOOK_HEADERS: one "Name: value" a line. The error
// never repeats a value.
func ParseHeaders(text string) (http.Header, error) {
	h := make(http.Header)
	for n, line := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t\"{}") {
			return nil, fmt.Errorf("line %d is not \"Name: value\"; want one header a line, e.g. WEBHOOK_HEADERS='Authorization: Bearer …'", n+1)
		}
		h.Add(name, strings.TrimSpace(value))
	}
	return h, nil
}

// signingKey returns the HMAC key of a WEBHOOK_SECRET: the bytes a whsec_
// secret encodes, or the text of any other.
func signingKey(secret string) ([]byte, error) {
	if secret == "" {
		return nil, nil
	}
	if b64, ok := strings.CutPrefix(secret, "whsec_"); ok {
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(key) == 0 {
			return nil, errors.New("WEBHOOK_SECRET starts with whsec_ but what follows is not base64: give whsec_<base64 key> as your receiver's library shows it, or a secret without the prefix to use its text as the key")
		}
		return key, nil
	}
	return []byte(secret), nil
}

// template is a WEBHOOK_URL split at its placeholders.
type template struct {
	parts []string // text, then placeholders and text in turn
	fixed bool     // no placeholders: every event goes to parts[0]
}

var placeholders = []string{"{schema}", "{table}", "{topic}"}

func parseTemplate(raw string) (template, error) {
	const allowed = "want http://… or https://…, with {schema}, {table} or {topic} where an event's own goes"
	var t template
	rest := raw
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			t.parts = append(t.parts, rest)
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return template{}, fmt.Errorf("WEBHOOK_URL=%q: a { without its }; %s", redact(raw), allowed)
		}
		p := rest[i : i+j+1]
		known := false
		for _, q := range placeholders {
			known = known || p == q
		}
		if !known {
			return template{}, fmt.Errorf("WEBHOOK_URL=%q: unknown placeholder %s; %s", redact(raw), p, allowed)
		}
		t.parts = append(t.parts, rest[:i], p)
		rest = rest[i+j+1:]
	}
	t.fixed = len(t.parts) == 1
	sample := t.render("public", "table", "topic")
	u, err := url.Parse(sample)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return template{}, fmt.Errorf("WEBHOOK_URL=%q: not an http:// or https:// URL with a host; %s", redact(raw), allowed)
	}
	return t, nil
}

func (t template) render(schema, table, topic string) string {
	if t.fixed {
		return t.parts[0]
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch p {
		case "{schema}":
			b.WriteString(url.PathEscape(schema))
		case "{table}":
			b.WriteString(url.PathEscape(table))
		case "{topic}":
			b.WriteString(url.PathEscape(topic))
		default:
			b.WriteString(p)
		}
	}
	return b.String()
}

// redact hides a password in a URL, leaving the rest as written (url's
// Redacted would escape the braces of the placeholders).
func redact(raw string) string { return RedactURL(raw) }

// RedactURL hides the password of a URL, user:password@ becoming
// user:xxxxx@, and leaves the rest of the text as it is.
func RedactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndexByte(authority, '@')
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(authority[:at], ":")
	if !hasPassword {
		return raw
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}
