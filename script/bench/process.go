package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is a subprocess the suite started and must stop: the dev broker
// or a pg2kafka.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been waited for
	err  error         // Wait's result, set before done is closed
	stop sync.Once
}

// startProcess starts cmd; Stop must be called, also when the suite fails.
func startProcess(name string, cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited is closed when the process has ended, asked to or not.
func (p *process) Exited() <-chan struct{} { return p.done }

// Stop asks the process to stop with SIGTERM, kills it if it has not within
// timeout, and returns its final state; an error if it did not exit cleanly.
// Only the first call signals; later ones return the same state.
func (p *process) Stop(timeout time.Duration) (*os.ProcessState, error) {
	p.stop.Do(func() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			_ = p.cmd.Process.Kill()
		}
		select {
		case <-p.done:
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			p.err = fmt.Errorf("did not stop within %s of SIGTERM and was killed", timeout)
		}
	})
	<-p.done
	if p.err != nil {
		return p.cmd.ProcessState, fmt.Errorf("%s: %w", p.name, p.err)
	}
	return p.cmd.ProcessState, nil
}
