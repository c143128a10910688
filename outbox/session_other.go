//go:build !linux

package outbox

import (
	"syscall"
	"time"
)

// setTCPUserTimeout does nothing where TCP_USER_TIMEOUT is not known: the
// keepalives and the round-trip deadlines bound a silent connection there.
func setTCPUserTimeout(syscall.RawConn, time.Duration) error { return nil }
