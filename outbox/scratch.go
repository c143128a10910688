package outbox

import (
	"bytes"

	"github.com/jackc/pgx/v5/pgtype"
)

// scanScratch is what a claimer reuses from batch to batch, so that scanning
// an event allocates next to nothing: at a hundred thousand events a second,
// the garbage collector's work for a few small allocations per event cost
// more than the rest of the scan.
type scanScratch struct {
	events []Event
	// names interns table schemas, table names and statements, which repeat
	// from event to event.
	names map[string]string
	// chunk is where event data is copied, many events to a chunk.
	chunk []byte
	// targets is where a row is scanned, before it is copied to its event.
	targets *scanTargets
}

// scanTargets holds the destinations of claimSQL's columns, in its order.
// The text columns are scanned as the driver's bytes, valid until the next
// row, and copied or interned from there.
type scanTargets struct {
	event                          Event
	xmin, xmax                     int64
	xid                            int64 // the claim's transaction id
	uuid                           pgtype.UUID
	schema, table, statement, data pgtype.DriverBytes
	dests                          []any
}

func (s *scanScratch) scanTargets() *scanTargets {
	if s.targets == nil {
		t := &scanTargets{}
		e := &t.event
		t.dests = []any{&t.xmin, &t.xmax, &t.xid, &e.ID, &t.uuid, &e.ExternalID, &t.schema, &t.table, &t.statement, &t.data, &e.CreatedAt, &e.Old, &e.Topic}
		s.targets = t
	}
	return s.targets
}

const (
	// maxInterned bounds names, should a database have very many tables.
	maxInterned = 4096
	// dataChunkBytes is the size of a chunk of event data; an event larger
	// than a quarter of it gets an allocation of its own.
	dataChunkBytes = 256 << 10
)

func (s *scanScratch) intern(b []byte) string {
	if name, ok := s.names[string(b)]; ok {
		return name
	}
	name := string(b)
	if s.names == nil {
		s.names = make(map[string]string)
	}
	if len(s.names) < maxInterned {
		s.names[name] = name
	}
	return name
}

// keep copies b, which the driver will overwrite, to memory of the event's
// own. A chunk is freed once no event in it is referenced any more.
func (s *scanScratch) keep(b []byte) []byte {
	if b == nil {
		return nil
	}
	if len(b) > dataChunkBytes/4 {
		return bytes.Clone(b)
	}
	if cap(s.chunk)-len(s.chunk) < len(b) {
		s.chunk = make([]byte, 0, dataChunkBytes)
	}
	start := len(s.chunk)
	s.chunk = append(s.chunk, b...)
	return s.chunk[start:len(s.chunk):len(s.chunk)]
}
