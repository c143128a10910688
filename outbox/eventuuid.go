package outbox

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// eventUUIDs derives the uuids of events queued without one, as
// pg2kafka.event_uuid() does: a version 8 uuid of the SHA-256 of the
// installation id, the event id and created_at in Unix microseconds. The
// trigger leaves uuid null because generating a random one cost every write
// more than deriving one costs the shipper.
type eventUUIDs struct {
	installation uuid.UUID
	sha          hash.Hash
	name         [16]byte
}

func (u *eventUUIDs) load(ctx context.Context, conn *pgx.Conn) error {
	err := conn.QueryRow(ctx, `SELECT id FROM pg2kafka.installation`).Scan(&u.installation)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return fmt.Errorf("outbox: pg2kafka is not installed in this database, or its schema is older than this shipper: run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true) as the owner of the database: %w", err)
	}
	if err != nil {
		return fmt.Errorf("outbox: read the installation id: %w", err)
	}
	u.sha = sha256.New()
	return nil
}

func (u *eventUUIDs) derive(id int64, createdAt time.Time) uuid.UUID {
	binary.BigEndian.PutUint64(u.name[:8], uint64(id))
	binary.BigEndian.PutUint64(u.name[8:], uint64(createdAt.UnixMicro()))
	return uuid.NewHash(u.sha, u.installation, u.name[:], 8)
}
