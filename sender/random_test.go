package sender_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// pick is a number from 0 to 99 drawn from seed and what: the same for
// the same arguments, whatever order the goroutines ask in.
func pick(seed int, what string, n int) int {
	f := fnv.New32a()
	fmt.Fprintf(f, "%d/%s/%d", seed, what, n)
	return int(f.Sum32() % 100)
}

// randomMTA is a fake MTA that misbehaves as seed says: it answers MAIL
// with 503 (bad sequence), 421 (and closes, or goes on answering 503
// until it closes) or 451; refuses recipients, or closes on one with
// 421; refuses or defers the end of data, or closes on it; may demand
// RSET after a refused message; and may drop a connection without a
// word, fall silent on one, or take up to two seconds to answer a
// command. Its faults are drawn per command, its rates per seed.
func randomMTA(seed int) *fakeMTA {
	m := newFakeMTA()
	m.chunking = pick(seed, "chunking", 0) < 50
	p503, p421, p451 := pick(seed, "p503", 0)%10, pick(seed, "p421", 0)%10, pick(seed, "p451", 0)%10
	m.mail = func(n, i int) string {
		switch x := pick(seed, "mail", n); {
		case x < p503:
			return "503 5.5.1 Bad sequence of commands"
		case x < p503+p421:
			return "421 4.3.2 closing"
		case x < p503+p421+p451:
			return "451 4.3.0 try later"
		}
		return ""
	}
	prcpt, rcpt421 := pick(seed, "prcpt", 0)%10, pick(seed, "rcpt421", 0) < 30
	var mu sync.Mutex
	rcpts := 0
	m.rcpt = func(int) string {
		mu.Lock()
		rcpts++
		k := rcpts
		mu.Unlock()
		switch x := pick(seed, "rcpt", k); {
		case x < prcpt:
			return "550 5.1.1 no such user"
		case rcpt421 && x < prcpt+2:
			return "421 4.3.2 closing"
		}
		return ""
	}
	pfinal, final421 := pick(seed, "pfinal", 0)%10, pick(seed, "final421", 0) < 30
	m.final = func(n int) string {
		switch x := pick(seed, "final", n); {
		case x < pfinal:
			return "451 4.3.0 later"
		case x < 2*pfinal:
			return "554 5.7.1 no"
		case final421 && x < 2*pfinal+2:
			return "421 4.3.2 closing"
		}
		return ""
	}
	if pick(seed, "after421", 0) < 50 {
		m.after421 = "503 5.5.1 closing"
	}
	m.strictRSET = pick(seed, "strict", 0) < 50
	if pick(seed, "faults", 0) < 60 {
		pdrop, pstall, pdelay := pick(seed, "pdrop", 0)%3, pick(seed, "pstall", 0)%2, pick(seed, "pdelay", 0)%15
		m.fault = func(n int) string {
			switch x := pick(seed, "fault", n); {
			case x < pdrop:
				return "drop"
			case x < pdrop+pstall:
				return "stall"
			case x < pdrop+pstall+pdelay:
				return fmt.Sprintf("%dms", 20*pick(seed, "delay", n))
			}
			return ""
		}
	}
	return m
}

// TestRandomlyMisbehavingServersEverySendAnsweredNoMessageTwice: many
// seeds, each a fake MTA misbehaving at its own rates (randomMTA) and a
// sender with its own MaxConns, MaxInFlight and callers, over in-memory
// connections that buffer as sockets do (so the reader writes in the
// writer's stead, as on TCP) or that buffer nothing, in a synctest
// bubble. Callers send one to three recipients (some AllowPartial),
// bodies from a few octets to a few hundred KiB, and some give up after
// a few milliseconds; some seeds set a Policy hook (the writer alone
// writes), some shut the sender down or close it while callers send.
// Whatever happens:
//   - every Send is answered before its context ends (a Send with a
//     day to spare never ends on its deadline: that would be a hang);
//   - no message is delivered twice;
//   - a Send answered without error was delivered once, and one
//     answered with an error that is not ErrOutcomeUnknown was not
//     delivered.
//
// It found a writer that answered the session's last attempt itself and
// then waited for nobody (b4e63e2), and messages the server queued
// reported as refused because their MAIL had been refused (503 or 451)
// while an earlier transaction was still open on the server.
func TestRandomlyMisbehavingServersEverySendAnsweredNoMessageTwice(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 30
	}
	for seed := range seeds {
		var bad []string
		var trace []string
		synctest.Test(t, func(t *testing.T) {
			m := randomMTA(seed)
			m.trace = &trace
			bad = runRandomSeed(t, m, seed)
			// The sender is closed: what the server was still waiting
			// out ends, and so does every server goroutine.
			time.Sleep(time.Minute)
		})
		if len(bad) > 0 {
			t.Errorf("seed %d:\n\t%s", seed, strings.Join(bad[:min(len(bad), 8)], "\n\t"))
			if len(trace) > 300 {
				trace = trace[len(trace)-300:]
			}
			t.Logf("the server's last %d lines:\n%s", len(trace), strings.Join(trace, "\n"))
			return
		}
	}
}

// runRandomSeed sends through a sender configured by seed to m and
// returns what broke the rules.
func runRandomSeed(t *testing.T, m *fakeMTA, seed int) []string {
	dial := m.dialPipe()
	if pick(seed, "buffered", 0) < 70 {
		dial = m.dialBuffered(4096 << (pick(seed, "size", 0) % 4))
	}
	cfg := sender.Config{Dial: dial, Security: sender.InsecurePlaintext, MaxDialFailures: 1000,
		MaxConns: 1 + pick(seed, "conns", 0)%3, MaxInFlight: 1 + pick(seed, "window", 0)%16}
	if pick(seed, "policy", 0) < 20 {
		// With a Policy hook, the writer alone writes.
		cfg.Options.Policy = func(context.Context, smtp.PolicyRequest) error { return nil }
	}
	callers := 1 + pick(seed, "callers", 0)%12
	s, err := sender.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Some seeds close the sender while callers send: Shutdown (which
	// lets what was written finish) or Close.
	closedAt := time.Duration(0)
	if x := pick(seed, "close", 0); x < 15 {
		closedAt = time.Duration(1+x) * 10 * time.Millisecond
		go func() {
			time.Sleep(closedAt)
			if x%2 == 0 {
				sctx, scancel := context.WithTimeout(context.Background(), time.Second)
				defer scancel()
				s.Shutdown(sctx)
				return
			}
			s.Close()
		}()
	}
	// A day: a seed whose server falls silent several times waits out
	// each reply timeout (up to 10 minutes) and the backoff after it.
	ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
	defer cancel()
	var mu sync.Mutex
	errs := map[string]error{}
	gaveUp := map[string]bool{}
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for k := range 10 {
				id := fmt.Sprintf("c%dm%d", c, k)
				env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
				if pick(seed, "multi", 0) < 40 {
					for r := range pick(seed, "rcpts/"+id, 0) % 3 {
						env.To = append(env.To, fmt.Sprintf("r%d@example.com", r))
					}
					env.AllowPartial = pick(seed, "partial/"+id, 0) < 50
				}
				body := idBody(id)
				if x := pick(seed, "big/"+id, 0); x < 10 {
					body += strings.Repeat(strings.Repeat("0123456789", 7)+"\r\n", 1024*(1+x%5))
				}
				sctx, scancel := ctx, context.CancelFunc(func() {})
				short := pick(seed, "short/"+id, 0) < 15
				if short {
					sctx, scancel = context.WithTimeout(ctx, time.Duration(pick(seed, "wait/"+id, 0))*time.Millisecond/2)
				}
				_, err := s.Send(sctx, env, strings.NewReader(body))
				scancel()
				mu.Lock()
				errs[id] = err
				gaveUp[id] = short && errors.Is(err, context.DeadlineExceeded)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	_, delivered := m.stats()
	var bad []string
	for id, err := range errs {
		n := delivered[id]
		switch {
		case gaveUp[id]:
			if n > 1 {
				bad = append(bad, fmt.Sprintf("%s: its caller gave up, and it was delivered %d times", id, n))
			}
		case closedAt > 0 && errors.Is(err, sender.ErrClosed):
			// Answered by the closing: delivered at most once (it may
			// have been committed before).
			if n > 1 {
				bad = append(bad, fmt.Sprintf("%s: delivered %d times (%v)", id, n, err))
			}
		case errors.Is(err, context.DeadlineExceeded):
			bad = append(bad, fmt.Sprintf("%s: not answered within a day: %v", id, err))
		case n > 1:
			bad = append(bad, fmt.Sprintf("%s: delivered %d times (%v)", id, n, err))
		case err == nil && n != 1:
			bad = append(bad, fmt.Sprintf("%s: answered as delivered, delivered %d times", id, n))
		case err != nil && n == 1 && !errors.Is(err, sender.ErrOutcomeUnknown):
			bad = append(bad, fmt.Sprintf("%s: answered %v, but the server queued it", id, err))
		}
	}
	return bad
}
