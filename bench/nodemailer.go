package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// nodemailer's SMTP pool runs in Node: bench/nodemailer/pool.js, driven
// over its stdin and stdout (one JSON command and one JSON answer a
// line). Its package is installed from the lockfile beside it.

// nodemailerInstall says how to install what the nodemailer client needs.
const nodemailerInstall = "install Node.js 20 or later (apt-get install nodejs npm) and run `npm ci --prefix bench/nodemailer`"

// nodemailerDir returns the folder of pool.js with nodemailer installed,
// or why the client cannot run.
func nodemailerDir() (string, error) {
	if _, err := exec.LookPath("node"); err != nil {
		return "", errors.New("node not found: " + nodemailerInstall)
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "bench", "nodemailer")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "nodemailer", "package.json")); err != nil {
		return "", errors.New("the nodemailer package is not installed: " + nodemailerInstall)
	}
	return dir, nil
}

// nodePool is a running pool.js.
type nodePool struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// openNodemailer starts pool.js for s at t. Its Send is not used: the
// pool runs its closed and open loops in Node (see remote).
func openNodemailer(ctx context.Context, s spec, t target) (client, error) {
	dir, err := nodemailerDir()
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(t.addr)
	if err != nil {
		return nil, err
	}
	p, _ := strconv.Atoi(port)
	_, text, _ := strings.Cut(string(message), "\r\n\r\n")
	cfg, err := json.Marshal(map[string]any{
		"host": host, "port": p, "secure": t.tls != nil, "user": benchUser, "pass": benchPass, "caFile": t.ca,
		// maxMessages 100 is nodemailer's default: each connection is
		// replaced (TCP, TLS, EHLO, AUTH) after 100 messages.
		"maxConnections": s.Conns, "maxMessages": 100,
		"from": mailFrom, "to": rcptTo, "text": text,
	})
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "node", filepath.Join(dir, "pool.js"), string(cfg))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	in, out, err := startPiped(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting node: %w", err)
	}
	return &nodePool{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20)}, nil
}

// call sends one command and decodes its answer into v.
func (n *nodePool) call(cmd map[string]any, v any) error {
	b, _ := json.Marshal(cmd)
	if _, err := n.in.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("nodemailer: %w", err)
	}
	line, err := n.out.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("nodemailer: %w", err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(line, &e) == nil && e.Error != "" {
		return errors.New("nodemailer: " + e.Error)
	}
	return json.Unmarshal(line, v)
}

// saturate returns the pool's msg/s with callers sending one message
// after another.
func (n *nodePool) saturate(callers int, tm timing) (float64, error) {
	var r struct {
		Sent, Failed int
		Ms           float64
		FirstError   string
	}
	if err := n.call(map[string]any{"op": "saturate", "callers": callers, "ms": tm.Window.Milliseconds(), "warmMs": tm.Warm.Milliseconds()}, &r); err != nil {
		return 0, err
	}
	if r.Sent == 0 || r.Failed > r.Sent/100 {
		return 0, fmt.Errorf("nodemailer: %d sent, %d failed: %s", r.Sent, r.Failed, r.FirstError)
	}
	if r.Failed > 0 {
		fmt.Fprintf(os.Stderr, "bench: nodemailer: %d of %d messages failed at saturation (counted out): %s\n", r.Failed, r.Sent+r.Failed, r.FirstError)
	}
	return float64(r.Sent) / (r.Ms / 1000), nil
}

// openLoop offers rate messages a second for dur, as openLoop does in
// Go.
func (n *nodePool) openLoop(rate float64, dur, timeout time.Duration, seed uint64) (loadResult, error) {
	var r struct {
		Lat        []float64
		Failed     int
		FirstError string
		MaxLateUs  float64
	}
	if err := n.call(map[string]any{"op": "open", "rate": rate, "ms": dur.Milliseconds(), "timeoutMs": timeout.Milliseconds(), "seed": seed}, &r); err != nil {
		return loadResult{}, err
	}
	res := loadResult{Rate: rate, Failed: r.Failed, FirstEr: r.FirstError, Lat: make([]time.Duration, len(r.Lat)),
		MaxLate: time.Duration(r.MaxLateUs * 1e3)}
	for i, us := range r.Lat {
		res.Lat[i] = time.Duration(us * 1e3)
	}
	slices.Sort(res.Lat)
	return res, nil
}

func (n *nodePool) Send(context.Context) error { return errNoSend }

func (n *nodePool) Close() {
	n.in.Close()
	done := make(chan struct{})
	go func() {
		n.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-done
	}
}
