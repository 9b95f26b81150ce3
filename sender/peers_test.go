package sender_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/sender"
	"github.com/smtpkit/smtpkit/smtp"
)

// TestPostfixSharedSessions: STARTTLS and implicit TLS sessions to a
// real Postfix, authenticated (Cyrus SASL, testuser/testpass), shared by
// concurrent callers: 20 goroutines × 10 messages over at most 3
// connections, every one delivered exactly once.
func TestPostfixSharedSessions(t *testing.T) {
	const goroutines, each = 20, 10
	p := testpeers.Postfix(t, testpeers.PostfixOptions{Deliver: true})
	cases := []struct {
		sec  sender.Security
		addr string
	}{
		{sender.StartTLS, p.StartTLSAddr()},
		{sender.ImplicitTLS, p.ImplicitTLSAddr()},
	}
	delivered := 0
	for _, tc := range cases {
		t.Run(tc.sec.String(), func(t *testing.T) {
			var mu sync.Mutex
			var mechs, tlsVersions []string
			var logins int
			s, err := sender.New(sender.Config{
				Addr:     tc.addr,
				Security: tc.sec,
				Credentials: func(context.Context) (sender.Credentials, error) {
					mu.Lock()
					logins++
					mu.Unlock()
					return sender.Credentials{Username: testpeers.PostfixUser, Secret: testpeers.PostfixPass}, nil
				},
				MaxConns: 3,
				Options: smtp.Options{TLSConfig: p.Cert().ClientConfig(), Audit: func(e smtp.Event) {
					mu.Lock()
					defer mu.Unlock()
					switch e.Type {
					case smtp.EventAuth:
						if e.Error == "" {
							mechs = append(mechs, e.Mechanism)
						}
					case smtp.EventTLS:
						tlsVersions = append(tlsVersions, e.TLSVersion)
					}
				}},
			})
			require.NoError(t, err)
			defer s.Close()
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range each {
						id := fmt.Sprintf("%s-%d-%d", tc.sec, g, i)
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						out, err := s.Send(ctx, smtp.Envelope{From: "sender@localhost", To: []string{"sink@localhost"}},
							strings.NewReader(fmt.Sprintf("From: <sender@localhost>\r\nTo: <sink@localhost>\r\nSubject: %s\r\nMessage-ID: <%s@smtpkit.test>\r\n\r\nHello from %s.\r\n", id, id, id)))
						cancel()
						if assert.NoError(t, err, id) {
							assert.NotEmpty(t, out.QueueID, "Postfix names its queue file")
						}
					}
				})
			}
			wg.Wait()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, s.Shutdown(ctx))
			st := s.Stats()
			t.Logf("stats: %+v; mechanisms %v", st, mechs)
			assert.EqualValues(t, goroutines*each, st.Sent)
			assert.LessOrEqual(t, st.Dials, int64(3), "sessions are shared, at most MaxConns of them")
			assert.Zero(t, st.DialFailures)
			mu.Lock()
			assert.Len(t, mechs, int(st.Dials), "each session authenticated once")
			assert.Equal(t, int(st.Dials), logins, "credentials asked for at each login")
			for _, m := range mechs {
				assert.Equal(t, smtp.MechSCRAMSHA256, m, "the strongest mechanism both sides have")
			}
			if tc.sec == sender.StartTLS {
				assert.Len(t, tlsVersions, int(st.Dials))
			}
			mu.Unlock()

			delivered += goroutines * each
			msgs, err := p.WaitDelivered(delivered, time.Minute)
			require.NoError(t, err)
			seen := map[string]int{}
			for _, m := range msgs {
				if id := messageID.FindSubmatch(m); id != nil {
					seen[string(id[1])]++
				}
			}
			for g := range goroutines {
				for i := range each {
					id := fmt.Sprintf("%s-%d-%d", tc.sec, g, i)
					assert.Equal(t, 1, seen[id], "delivered once: %s", id)
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	msgs, err := p.Delivered()
	require.NoError(t, err)
	assert.Len(t, msgs, delivered, "nothing more was delivered")
}

var messageID = regexp.MustCompile(`(?m)^Message-ID: <([^@>]+)@smtpkit\.test>`)
