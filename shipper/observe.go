package shipper

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Settled is a batch whose outcome is committed, as Config.OnSettled sees it.
type Settled struct {
	// Events are the batch's events in queue order; Messages and Errs hold,
	// at the same index, what was sent for each and how it ended.
	Events   []outbox.Event
	Messages []Message
	// Errs holds nil for each event the destination acknowledged, which is
	// now deleted from the queue; a *RejectedError for each now in the
	// dead-letter table; any other error for each left queued for a retry.
	Errs []error
	// Claimed is when the batch's claim began, Acknowledged when the
	// destination answered, and Committed when the queue had taken the
	// outcome in.
	Claimed, Acknowledged, Committed time.Time
}

// State is what a Shipper is doing, for health checks and status pages.
type State struct {
	// Running is true from the start of Run until it returns.
	Running bool
	// Workers holds one entry per worker once Run has started them.
	Workers []WorkerState
}

// WorkerState is one worker's part of State.
type WorkerState struct {
	// Joined is true while the worker is counted among the shippers: it is
	// connected and its last step met no database error.
	Joined bool
	// Lanes are the lanes the worker owns, ascending.
	Lanes []int32
	// Err is the database error of the worker's last step, if any.
	Err error
}

// Lanes returns how many lanes the shipper's workers own in all.
func (s State) Lanes() int {
	n := 0
	for _, w := range s.Workers {
		n += len(w.Lanes)
	}
	return n
}

// Ready returns nil when every worker of a running shipper is joined, and
// otherwise what is wrong.
func (s State) Ready() error {
	if !s.Running {
		return errors.New("the shipper is not running")
	}
	for i, w := range s.Workers {
		if !w.Joined {
			if w.Err != nil {
				return fmt.Errorf("worker %d has not joined the shippers: %w", i, w.Err)
			}
			return fmt.Errorf("worker %d has not joined the shippers yet", i)
		}
	}
	if len(s.Workers) == 0 {
		return errors.New("the shipper's workers have not started yet")
	}
	return nil
}

// State returns what the shipper is doing now. It is safe to call from any
// goroutine, as often as a health probe likes.
func (s *Shipper) State() State {
	st := State{Running: s.running.Load()}
	if ws := s.workers.Load(); ws != nil {
		for _, w := range *ws {
			st.Workers = append(st.Workers, w.state.load())
		}
	}
	return st
}

// workerState is the part of a worker other goroutines may read.
type workerState struct {
	v atomic.Pointer[WorkerState]
}

func (s *workerState) load() WorkerState {
	if p := s.v.Load(); p != nil {
		return *p
	}
	return WorkerState{}
}

// note records the worker's lanes and the outcome of its last step; it
// allocates only when something changed, so that it can run every step.
func (s *workerState) note(lanes []int32, err error) {
	old := s.v.Load()
	if old != nil && old.Err == nil && err == nil && old.Joined && slices.Equal(old.Lanes, lanes) {
		return
	}
	s.v.Store(&WorkerState{Joined: err == nil, Lanes: slices.Clone(lanes), Err: err})
}
