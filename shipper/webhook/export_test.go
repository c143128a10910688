package webhook

import "time"

// SetRecheckInterval shortens how long WatchStartup waits between two looks
// at an endpoint it cannot reach, so that a test need not wait.
func SetRecheckInterval(s *Sink, d time.Duration) { s.recheck = d }
