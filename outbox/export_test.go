package outbox

// WithoutIdleSessionTimeout makes c treat its server as one without
// idle_session_timeout, as Postgres 13 is.
func WithoutIdleSessionTimeout(c *Claimer) { c.bounds.withoutIdleSessionTimeout = true }
