package outbox

import "sync"

// idReading is what the newest read of the queue's id sequence told: no id
// past last had been handed out. gen counts the reads that found ids handed
// out since the one before.
type idReading struct {
	last int64
	gen  uint64
	read bool // false until the first read
}

// idReadings is the newest reading of the id sequence by a queue's watcher
// and claimers, shared so that whichever reads it first after an event
// wakes the claimers waiting for one.
type idReadings struct {
	mu     sync.Mutex
	newest idReading
	// advanced is closed, and replaced, when a read finds ids handed out
	// since the one before.
	advanced chan struct{}
}

// note keeps a read of last and tells whether it found ids handed out
// since the newest before it (the first read that finds any does). Reads may
// return out of order; ids only grow, so the highest is kept.
func (r *idReadings) note(last int64) (advanced bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if last > r.newest.last {
		advanced = true
		r.newest.gen++
		if r.advanced != nil {
			close(r.advanced)
			r.advanced = nil
		}
	}
	r.newest.last = max(r.newest.last, last)
	r.newest.read = true
	return advanced
}

// get returns the newest reading; a zero one if there has been none.
func (r *idReadings) get() idReading {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.newest
}

// advancedSince returns a channel that is closed once a read of a later
// generation than gen has been made: at once if one has.
func (r *idReadings) advancedSince(gen uint64) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.newest.gen > gen {
		return closedChannel
	}
	if r.advanced == nil {
		r.advanced = make(chan struct{})
	}
	return r.advanced
}

var closedChannel = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()
