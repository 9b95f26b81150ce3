package sender_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
	"github.com/smtpkit/smtpkit/transport"
)

// holdServer serves one connection of c: CHUNKING and PIPELINING, and
// every reply of the first transaction held until the second
// transaction's MAIL arrives, as a server that answers late but keeps
// reading does. It reads and writes on separate goroutines, so that a
// net.Pipe (no buffer) carries pipelined commands.
func holdServer(c net.Conn) {
	out := make(chan string, 64)
	go func() {
		for s := range out {
			if _, err := io.WriteString(c, s); err != nil {
				return
			}
		}
	}()
	defer close(out)
	defer c.Close()
	out <- "220 mx.example ready\r\n"
	r := bufio.NewReader(c)
	var held []string
	mails := 0
	reply := func(s string) {
		if mails == 1 {
			held = append(held, s)
			return
		}
		out <- s
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\r\n")
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "EHLO "):
			out <- "250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
		case strings.HasPrefix(line, "MAIL FROM:"):
			if mails++; mails == 2 {
				out <- strings.Join(held, "")
			}
			reply("250 2.1.0 Ok\r\n")
		case strings.HasPrefix(line, "RCPT TO:"):
			reply("250 2.1.5 Ok\r\n")
		case len(f) == 3 && f[0] == "BDAT" && f[2] == "LAST":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				return
			}
			reply(fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", mails))
		case line == "QUIT":
			out <- "221 2.0.0 bye\r\n"
			return
		default:
			out <- "500 5.5.1 what?\r\n"
		}
	}
}

// TestNewSendJoinsAWaitingSession: the sender's one session waits for the
// reply to a first message (the server holds it); a second Send is
// written at once on that session, its wait for the reply interrupted,
// rather than after the reply. The server answers the first message only
// once the second one's MAIL arrives: a session that writes only between
// its reads would wait for a timeout. In virtual time (synctest), no time
// passes at all.
func TestNewSendJoinsAWaitingSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dials := 0
		s, err := sender.New(sender.Config{
			Security: sender.InsecurePlaintext, Options: smtp.Options{LocalName: "client.example"},
			MaxConns: 1, MaxInFlight: 8,
			Dial: func(ctx context.Context) (transport.Transport, error) {
				if dials++; dials > 1 {
					return nil, fmt.Errorf("dial %d: only one connection in this test", dials)
				}
				client, server := net.Pipe()
				go holdServer(server)
				return client, nil
			},
		})
		require.NoError(t, err)
		defer s.Close()
		env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		first := make(chan error, 1)
		go func() {
			out, err := s.Send(ctx, env, strings.NewReader(msg(1)))
			if err == nil && out.QueueID != "Q1" {
				err = fmt.Errorf("first: queue id %q", out.QueueID)
			}
			first <- err
		}()
		synctest.Wait() // the session waits for the held reply
		out, err := s.Send(ctx, env, strings.NewReader(msg(2)))
		require.NoError(t, err)
		assert.Equal(t, "Q2", out.QueueID)
		require.NoError(t, <-first)
		assert.Zero(t, time.Since(start), "no time passed: nothing waited for a timeout")
		st := s.Stats()
		assert.EqualValues(t, 1, st.Dials)
		assert.EqualValues(t, 2, st.Sent)
		assert.Zero(t, st.Replayed)
		require.NoError(t, s.Shutdown(ctx))
	})
}
