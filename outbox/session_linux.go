package outbox

import (
	"syscall"
	"time"
)

// tcpUserTimeout is TCP_USER_TIMEOUT, the same on every Linux architecture,
// which package syscall leaves out on some.
const tcpUserTimeout = 0x12

// setTCPUserTimeout makes the kernel fail the connection once data it sent
// has gone unacknowledged for d, rather than retransmitting for a quarter of
// an hour.
func setTCPUserTimeout(raw syscall.RawConn, d time.Duration) error {
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d.Milliseconds()))
	}); cerr != nil {
		return cerr
	}
	return err
}
