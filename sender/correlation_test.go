package sender_test

import (
	"context"
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

// TestCallerGaveUpAfterCommitLateEventCarriesMessageIDAndTag: the caller
// gives up while the server holds its final reply (the message is
// committed: ErrOutcomeUnknown). The server then accepts it; the late
// audit event says so, and carries the message's Message-ID, read from
// its header as the body streamed, and the caller's tag (sender.WithTag),
// so the unknown outcome can be matched to it in the log.
func TestCallerGaveUpAfterCommitLateEventCarriesMessageIDAndTag(t *testing.T) {
	holding := make(chan struct{})
	release := make(chan struct{})
	srv := testpeers.GoSMTP(t, testpeers.GoSMTPOptions{Delay: func(stage string) time.Duration {
		if stage == "DATA" {
			close(holding)
			<-release
		}
		return 0
	}})
	var mu sync.Mutex
	var events []smtp.Event
	late := make(chan smtp.Event, 1)
	s, err := sender.New(sender.Config{Addr: srv.Addr(), Security: sender.InsecurePlaintext,
		Options: smtp.Options{Audit: func(e smtp.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e.Type == smtp.EventMessage {
				late <- e
			}
		}}})
	require.NoError(t, err)
	defer s.Close()
	ctx, cancel := context.WithCancel(sender.WithTag(context.Background(), "order-8812"))
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(ctx, smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}},
			strings.NewReader(idBody("receipt-42")))
		done <- err
	}()
	<-holding // the server has the whole message and holds its reply
	cancel()
	err = <-done
	require.ErrorIs(t, err, sender.ErrOutcomeUnknown)
	close(release)
	select {
	case e := <-late:
		assert.Equal(t, "<receipt-42@test.example>", e.MessageID)
		assert.Equal(t, "order-8812", e.Tag)
		assert.Equal(t, 250, e.Code)
	case <-time.After(10 * time.Second):
		t.Fatal("no late event")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Type == smtp.EventMailAccepted || e.Type == smtp.EventRcptAccepted {
			assert.Equal(t, "order-8812", e.Tag, "%s", e.Type)
		}
	}
}
