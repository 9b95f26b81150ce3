package delayline

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoServer echoes every connection until EOF, then half-closes it.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func startLine(t *testing.T, target string, oneWay time.Duration) *Line {
	t.Helper()
	l, err := Start(target, oneWay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// pingRTTs sends n small messages one at a time and returns each round
// trip, sorted.
func pingRTTs(t *testing.T, c net.Conn, n int) []time.Duration {
	t.Helper()
	msg := make([]byte, 64)
	got := make([]byte, 64)
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		msg[0] = byte(i)
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
		if got[0] != byte(i) {
			t.Fatalf("ping %d: echo out of order", i)
		}
	}
	slices.Sort(rtts)
	return rtts
}

// TestEchoRTT checks the round trip the line adds, as the benchmarks use
// it, and logs what it really is.
func TestEchoRTT(t *testing.T) {
	echo := echoServer(t)
	direct := pingRTTs(t, dial(t, echo), 50)
	t.Logf("direct loopback: median %v, p90 %v", direct[25], direct[45])
	for _, rtt := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond} {
		l := startLine(t, echo, rtt/2)
		n := 50
		if rtt >= 10*time.Millisecond {
			n = 20
		}
		rtts := pingRTTs(t, dial(t, l.Addr()), n)
		med, p90 := rtts[n/2], rtts[n*9/10]
		t.Logf("RTT %v: median %v (+%v), p90 %v, min %v", rtt, med, med-rtt, p90, rtts[0])
		if rtts[0] < rtt-quantum {
			t.Errorf("RTT %v: a round trip took only %v", rtt, rtts[0])
		}
		// A guard, not a measurement: CI runs this with -race beside
		// every other package on two shared cores. The precision is
		// measured and reported by the benchmark itself (docs/benchmarks.md).
		if slack := max(rtt/2, 10*time.Millisecond); med > rtt+slack {
			t.Errorf("RTT %v: median round trip %v, more than %v over", rtt, med, slack)
		}
	}
}

// TestKeepsFlowing checks that the line is a delay line, not
// stop-and-wait: messages sent a little apart each take one RTT, so ten
// of them take about one RTT plus the spread, not ten RTTs.
func TestKeepsFlowing(t *testing.T) {
	const rtt = 20 * time.Millisecond
	l := startLine(t, echoServer(t), rtt/2)
	lat, total := stream(t, l.Addr(), 10, 1, 100, 2*time.Millisecond)
	t.Logf("10 messages 2ms apart through RTT %v: %v in all, latencies %v", rtt, total, lat)
	if total > 3*rtt+10*2*time.Millisecond {
		t.Errorf("took %v: the line does not keep bytes flowing", total)
	}
	checkLatencies(t, lat, rtt)
}

// TestManySmallChunks streams small messages, each its own write, at
// about 20,000 a second in each direction through a short line: the
// line must keep up, each message still taking about one RTT.
func TestManySmallChunks(t *testing.T) {
	const rtt = 2 * time.Millisecond
	l := startLine(t, echoServer(t), rtt/2)
	const n = 5000
	lat, total := stream(t, l.Addr(), n, 20, 64, time.Millisecond)
	slices.Sort(lat)
	t.Logf("%d messages through RTT %v: %v in all, latency median %v, p90 %v, max %v", n, rtt, total, lat[n/2], lat[n*9/10], lat[n-1])
	checkLatencies(t, lat, rtt)
}

// stream writes n messages of size octets, each its own write, in
// bursts of burst with a pause of gap after each, through addr to an echo
// server, and returns each one's round trip and the total time.
func stream(t *testing.T, addr string, n, burst, size int, gap time.Duration) ([]time.Duration, time.Duration) {
	t.Helper()
	c := dial(t, addr)
	sent := make([]atomic.Int64, n)
	errc := make(chan error, 1)
	go func() {
		msg := make([]byte, size)
		for i := range n {
			msg[0], msg[1] = byte(i), byte(i>>8)
			sent[i].Store(time.Now().UnixNano())
			if _, err := c.Write(msg); err != nil {
				errc <- err
				return
			}
			if (i+1)%burst == 0 {
				time.Sleep(gap)
			}
		}
		errc <- nil
	}()
	start := time.Now()
	got := make([]byte, size)
	lat := make([]time.Duration, 0, n)
	for i := range n {
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Duration(time.Now().UnixNano()-sent[i].Load()))
		if got[0] != byte(i) || got[1] != byte(i>>8) {
			t.Fatalf("message %d out of order", i)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return lat, time.Since(start)
}

// checkLatencies wants every round trip at least rtt and the median
// within a few milliseconds of it (generous: the machine is shared).
func checkLatencies(t *testing.T, lat []time.Duration, rtt time.Duration) {
	t.Helper()
	s := slices.Clone(lat)
	slices.Sort(s)
	if s[0] < rtt-quantum {
		t.Errorf("a message came back after %v, under the RTT of %v", s[0], rtt)
	}
	// An upper bound is a guard only (see TestEchoRTT): a line that adds
	// half an RTT more is broken, one a few milliseconds late is a busy
	// machine.
	if med := s[len(s)/2]; med > rtt+max(rtt/2, 10*time.Millisecond) {
		t.Errorf("median round trip %v for an RTT of %v", med, rtt)
	}
}

// TestBulkIntegrity pushes several MiB through both directions at once
// and checks that every octet arrives, in order.
func TestBulkIntegrity(t *testing.T) {
	l := startLine(t, echoServer(t), time.Millisecond)
	c := dial(t, l.Addr())
	data := make([]byte, 8<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	errc := make(chan error, 1)
	go func() {
		// Odd-sized writes, so chunks do not line up with the reads.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(70000))
			if _, err := c.Write(rest[:n]); err != nil {
				errc <- err
				return
			}
			rest = rest[n:]
		}
		errc <- c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("got %d octets back (want %d), or different ones", len(got), len(data))
	}
}

// TestHalfClose checks that an orderly end travels through the line,
// delayed like data, and that the other direction stays open.
func TestHalfClose(t *testing.T) {
	const oneWay = 5 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c) // until the client's half-close
		if err != nil {
			done <- err
			return
		}
		_, err = c.Write(append([]byte("got "), b...))
		done <- err
	}()
	l := startLine(t, ln.Addr().String(), oneWay)
	c := dial(t, l.Addr())
	start := time.Now()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte("got hello")) {
		t.Fatalf("got %q", got)
	}
	if el := time.Since(start); el < 2*oneWay {
		t.Errorf("reply after %v, before one round trip", el)
	}
}

// TestCloseWithOpenConnections checks that Close ends every goroutine
// (goleak in TestMain) while connections are open and data waits.
func TestCloseWithOpenConnections(t *testing.T) {
	echo := echoServer(t)
	l, err := Start(echo, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var cs []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		c.Write([]byte("in the line"))
	}
	time.Sleep(10 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	for _, c := range cs {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// EOF or a reset: either way the line let go of it.
		if _, err := io.ReadAll(c); err != nil {
			t.Logf("read after Close: %v", err)
		}
		c.Close()
	}
}

func TestUnreachableTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	l := startLine(t, addr, time.Millisecond)
	c := dial(t, l.Addr())
	if _, err := io.ReadAll(c); err != nil {
		t.Logf("read: %v", err)
	}
}

func TestWaiterPrecision(t *testing.T) {
	var w waiter
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	restore := preciseThread()
	defer restore()
	var late []time.Duration
	for range 400 {
		d := time.Now().Add(500 * time.Microsecond)
		w.until(d)
		late = append(late, time.Since(d))
	}
	slices.Sort(late)
	t.Logf("500µs waits: late by median %v, p90 %v, max %v (margin %v)", late[200], late[360], late[399], w.margin())
	if late[200] > 200*time.Microsecond {
		t.Errorf("median lateness %v", late[200])
	}
}
