package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
)

// proc is a subprocess chaos started: a pg2kafka replica or the broker.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been waited for
	err  error         // Wait's result, set before done is closed
	// signalled is set before chaos signals the process, so that its exit
	// is not taken for a crash.
	signalled atomic.Bool
}

// startProc starts cmd in a process group of its own, so that a Ctrl-C in the
// terminal reaches chaos alone and chaos decides how its children stop, and
// with a parent-death signal, so that none outlives a chaos that was killed.
// onExit, if given, runs once the process has exited.
func startProc(name string, cmd *exec.Cmd, onExit func(*proc)) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		if onExit != nil {
			onExit(p)
		}
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the exit, which the kernel makes prompt.
func (p *proc) kill() error {
	p.signalled.Store(true)
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still running 10s after SIGKILL", p.name, p.pid())
	}
}

// terminate sends SIGTERM and waits up to timeout for the exit; past it the
// process is killed. It returns how long the process took and Wait's error
// (nil for exit status 0), or an error of its own if it had to kill.
func (p *proc) terminate(timeout time.Duration) (took time.Duration, exitErr error, err error) {
	p.signalled.Store(true)
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, nil, fmt.Errorf("SIGTERM %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return time.Since(start), p.err, nil
	case <-time.After(timeout):
		_ = p.kill()
		return time.Since(start), p.err, fmt.Errorf("%s (pid %d) did not exit within %s of SIGTERM and was killed", p.name, p.pid(), timeout)
	}
}

// rss returns the process's resident memory, in bytes, from /proc.
func rss(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS (a zombie?)", pid)
}

// openLog opens a subprocess's log file for appending, after a line that
// marks where this run of it begins.
func openLog(path, header string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "--- chaos: %s %s\n", time.Now().Format(time.RFC3339Nano), header)
	return f, nil
}

// fleet is a scenario's pg2kafka replicas. A replica that exits without
// chaos having signalled it is recorded as a crash.
type fleet struct {
	bin      string
	env      [][]string // per replica
	logPaths []string

	mu      sync.Mutex
	procs   []*proc
	starts  []int
	crashes []string
}

func newFleet(bin, logDir, scenario string, env [][]string) *fleet {
	f := &fleet{bin: bin, env: env, procs: make([]*proc, len(env)), starts: make([]int, len(env))}
	for i := range env {
		f.logPaths = append(f.logPaths, filepath.Join(logDir, fmt.Sprintf("%s-replica-%d.log", scenario, i)))
	}
	return f
}

func (f *fleet) size() int { return len(f.env) }

// start starts replica i, which must not be running.
func (f *fleet) start(i int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.procs[i]; p != nil && p.alive() {
		return fmt.Errorf("replica %d is already running (pid %d)", i, p.pid())
	}
	f.starts[i]++
	log, err := openLog(f.logPaths[i], fmt.Sprintf("start #%d", f.starts[i]))
	if err != nil {
		return err
	}
	cmd := exec.Command(f.bin)
	cmd.Env = f.env[i]
	cmd.Stdout, cmd.Stderr = log, log
	name := fmt.Sprintf("replica %d", i)
	p, err := startProc(name, cmd, func(p *proc) {
		log.Close()
		if p.signalled.Load() {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.crashes = append(f.crashes, fmt.Sprintf("%s (pid %d) exited on its own at %s: %v; log: %s",
			name, p.pid(), time.Now().Format("15:04:05.000"), p.err, f.logPaths[i]))
	})
	if err != nil {
		log.Close()
		return err
	}
	f.procs[i] = p
	return nil
}

func (f *fleet) startAll() error {
	for i := range f.size() {
		if err := f.start(i); err != nil {
			return err
		}
	}
	return nil
}

func (f *fleet) proc(i int) *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs[i]
}

// pids returns the pids of the replicas running now.
func (f *fleet) pids() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int
	for _, p := range f.procs {
		if p != nil && p.alive() {
			pids = append(pids, p.pid())
		}
	}
	return pids
}

// crashed returns the replicas' exits that chaos did not cause.
func (f *fleet) crashed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.crashes...)
}

// stopResult is how one replica answered SIGTERM.
type stopResult struct {
	replica int
	took    time.Duration
	exitErr error // nil: exit status 0
	err     error // it had to be killed, or could not be signalled
}

// terminateAll sends SIGTERM to every running replica at once and waits up
// to timeout for each.
func (f *fleet) terminateAll(timeout time.Duration) []stopResult {
	var results []stopResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range f.size() {
		p := f.proc(i)
		if p == nil || !p.alive() {
			continue
		}
		wg.Go(func() {
			took, exitErr, err := p.terminate(timeout)
			mu.Lock()
			results = append(results, stopResult{replica: i, took: took, exitErr: exitErr, err: err})
			mu.Unlock()
		})
	}
	wg.Wait()
	return results
}

// broker is the dev broker, on a fixed port and with its data in a
// directory, so that it can be stopped and started again as the same broker
// holding the same records.
type broker struct {
	bin     string
	port    int
	dataDir string
	logPath string
	addr    string

	mu      sync.Mutex
	cur     *proc
	crashes []string
}

// start starts the broker and waits for it to print its address.
func (b *broker) start(ctx context.Context) error {
	log, err := openLog(b.logPath, "start")
	if err != nil {
		return err
	}
	cmd := exec.Command(b.bin, "-port", strconv.Itoa(b.port), "-data-dir", b.dataDir, "-partitions", "3")
	addr := devenv.NewFirstLine()
	cmd.Stdout, cmd.Stderr = addr, log
	p, err := startProc("devkafka", cmd, func(p *proc) {
		log.Close()
		if !p.signalled.Load() {
			b.mu.Lock()
			b.crashes = append(b.crashes, fmt.Sprintf("devkafka exited on its own: %v; log: %s", p.err, b.logPath))
			b.mu.Unlock()
		}
	})
	if err != nil {
		log.Close()
		return err
	}
	b.mu.Lock()
	b.cur = p
	b.mu.Unlock()
	select {
	case line := <-addr.Line:
		b.addr = line
		return nil
	case <-p.done:
		err = fmt.Errorf("devkafka exited before printing its address: %v (log: %s)", p.err, b.logPath)
	case <-time.After(time.Minute):
		err = fmt.Errorf("devkafka printed no address within a minute (log: %s)", b.logPath)
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = p.kill()
	return err
}

// stop stops the broker with SIGTERM, which makes it write its state to its
// data directory.
func (b *broker) stop() error {
	b.mu.Lock()
	p := b.cur
	b.mu.Unlock()
	if p == nil || !p.alive() {
		return nil
	}
	_, exitErr, err := p.terminate(time.Minute)
	if err != nil {
		return err
	}
	if exitErr != nil {
		return fmt.Errorf("devkafka: %w (log: %s)", exitErr, b.logPath)
	}
	return nil
}

// crashed returns the broker's exits that chaos did not cause.
func (b *broker) crashed() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.crashes...)
}
