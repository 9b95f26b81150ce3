package smtp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fs "github.com/smtpkit/smtpkit/internal/faultserver"
	"github.com/smtpkit/smtpkit/smtp"
)

// --- 8. Session ---------------------------------------------------------

func TestTranscriptSessionStates(t *testing.T) {
	tx1 := trMail + trRcpt + trBDAT("x\r\n")
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING", "AUTH PLAIN"),
		fs.ExpectLine("AUTH PLAIN AHVzZXIAcGFzcw=="), fs.Reply("235 2.7.0 Authentication successful\r\n"),
		fs.Expect(tx1), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
		fs.ExpectLine("RSET"), fs.Reply("250 ok\r\n"),
		fs.ExpectLine("NOOP"), fs.Reply("250 ok\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	assert.Equal(t, smtp.StateReady, c.State())
	assert.Equal(t, "ready", c.State().String())
	require.NoError(t, c.Login(ctx, "user", "pass"))
	// AUTH succeeds once per session.
	for _, err := range []error{c.Login(ctx, "user", "pass"), c.LoginWith(ctx, smtp.MechPLAIN, "user", "pass")} {
		trErr(t, err, smtp.OpAUTH, smtp.KindInvalidInput)
	}

	tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assert.Equal(t, smtp.StateTransaction, c.State())
	assert.Equal(t, "transaction", c.State().String())
	// Commands that need an idle session are refused while replies are owed.
	for _, err := range []error{c.Noop(ctx), c.Reset(ctx), c.Login(ctx, "user", "pass")} {
		se := trErr(t, err, se0(err), smtp.KindInvalidInput)
		assert.Contains(t, se.Message, "pending")
	}
	// A transaction of another client, or none, is refused.
	_, err = c.ReadTx(ctx, nil)
	trErr(t, err, smtp.OpSend, smtp.KindInvalidInput)
	out, err := c.ReadTx(ctx, tx)
	require.NoError(t, err)
	again, err := c.ReadTx(ctx, tx)
	require.NoError(t, err)
	assert.Same(t, out, again, "a second ReadTx returns the same outcome")
	assert.Equal(t, smtp.StateReady, c.State())

	require.NoError(t, c.Reset(ctx))
	require.NoError(t, c.Noop(ctx))
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, smtp.StateClosed, c.State())
	assert.Equal(t, "closed", c.State().String())
	require.NoError(t, c.Close(), "Close after Quit")
	require.NoError(t, c.Close(), "Close is idempotent")
	trEveryCallClosed(t, c)
	assert.Equal(t, trEHLO+"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"+tx1+"RSET\r\nNOOP\r\nQUIT\r\n", trEnd(t, srv, c))
}

// se0 returns the Op of err, for checks that only care about its kind.
func se0(err error) smtp.Op {
	var se *smtp.Error
	if errors.As(err, &se) {
		return se.Op
	}
	return ""
}

// trEveryCallClosed checks that every call on a closed session fails
// with an error wrapping ErrClosed and writes nothing.
func trEveryCallClosed(t *testing.T, c *smtp.Client) {
	t.Helper()
	ctx := trCtx(t)
	_, sendErr := c.Send(ctx, trEnv, strings.NewReader("x\r\n"))
	_, writeErr := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
	for name, err := range map[string]error{
		"Send": sendErr, "WriteTx": writeErr,
		"Noop": c.Noop(ctx), "Reset": c.Reset(ctx), "Quit": c.Quit(ctx),
		"Login": c.Login(ctx, "u", "p"), "LoginWith": c.LoginWith(ctx, smtp.MechPLAIN, "u", "p"),
	} {
		assert.ErrorIs(t, err, smtp.ErrClosed, name)
		var se *smtp.Error
		if assert.ErrorAs(t, err, &se, name) {
			assert.Equal(t, smtp.KindIO, se.Kind, name)
			assert.True(t, strings.HasPrefix(err.Error(), "smtp: "), name)
		}
	}
	assert.Equal(t, smtp.StateClosed, c.State())
	assert.NoError(t, c.Close())
}

// A session broken by the server: the first cause is kept, and every
// later call returns an error wrapping ErrClosed.
func TestTranscriptBrokenSession(t *testing.T) {
	audit := &trAudit{}
	srv, c, _ := trConnect(t, &smtp.Options{Audit: audit.hook}, trSteps(trHello("PIPELINING"), fs.ExpectLine("NOOP"), fs.Close())...)
	ctx := trCtx(t)
	err := c.Noop(ctx)
	trErr(t, err, smtp.OpNOOP, smtp.KindIO)
	assert.True(t, smtp.IsTemporary(err))
	assert.Equal(t, smtp.StateClosed, c.State())
	var first *smtp.Error
	require.ErrorAs(t, c.Err(), &first)
	assert.Equal(t, smtp.OpNOOP, first.Op)
	trEveryCallClosed(t, c)
	// The closed error says what closed the session.
	assert.Contains(t, c.Noop(ctx).Error(), "NOOP")
	events := audit.Events()
	assert.Equal(t, smtp.EventSessionAborted, events[len(events)-1].Type)
	assert.Equal(t, smtp.KindIO, events[len(events)-1].Kind)
	assert.Equal(t, trEHLO+"NOOP\r\n", trEnd(t, srv, c))
}

func TestTranscriptQuit(t *testing.T) {
	t.Run("not 221", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello(), fs.ExpectLine("QUIT"), fs.Reply("250 what?\r\n"))...)
		err := c.Quit(trCtx(t))
		se := trErr(t, err, smtp.OpQUIT, smtp.KindRejected)
		assert.Equal(t, 250, se.Code)
		assert.Equal(t, smtp.StateClosed, c.State(), "the session ends whatever the reply")
		assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c))
	})
	t.Run("no reply", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello(), fs.ExpectLine("QUIT"), fs.Close())...)
		err := c.Quit(trCtx(t))
		trErr(t, err, smtp.OpQUIT, smtp.KindIO)
		assert.Equal(t, smtp.StateClosed, c.State())
		assert.Equal(t, trEHLO+"QUIT\r\n", trEnd(t, srv, c))
	})
	t.Run("while transactions are pending", func(t *testing.T) {
		tx1 := trMail + trRcpt + trBDAT("x\r\n")
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"), fs.Expect(tx1))...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Flush(ctx))
		err = c.Quit(ctx)
		trErr(t, err, smtp.OpQUIT, smtp.KindInvalidInput)
		assert.Equal(t, smtp.StateClosed, c.State(), "Quit closes the session whatever happens")
		_, err = c.ReadTx(ctx, tx)
		assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown, "the message was committed, its reply never read")
		assert.Equal(t, trEHLO+tx1, trEnd(t, srv, c), "no QUIT while replies are owed")
	})
	t.Run("Close", func(t *testing.T) {
		audit := &trAudit{}
		srv, c, _ := trConnect(t, &smtp.Options{Audit: audit.hook}, trHello()...)
		require.NoError(t, c.Close())
		require.NoError(t, c.Close())
		assert.Equal(t, smtp.StateClosed, c.State())
		trEveryCallClosed(t, c)
		assert.Equal(t, trEHLO, trEnd(t, srv, c), "Close sends nothing")
		assert.NotContains(t, audit.Types(), smtp.EventQuit)
	})
}

// --- 9. Errors ----------------------------------------------------------

func TestErrorFormatAndClassification(t *testing.T) {
	unknown := &smtp.Error{Op: smtp.OpBDAT, Kind: smtp.KindIO, Message: "reply lost", Err: fmt.Errorf("%w: %w", smtp.ErrOutcomeUnknown, errors.New("EOF"))}
	tests := []struct {
		name      string
		err       error
		text      string
		temporary bool
		permanent bool
	}{
		{"421", &smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindRejected, Code: 421, Enhanced: "4.3.2", Message: "bye"}, "smtp: MAIL: rejected: 421 4.3.2: bye", true, false},
		{"450", &smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 450, Recipient: "b@x", Message: "greylisted"}, "smtp: RCPT <b@x>: rejected: 450: greylisted", true, false},
		{"550", &smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 550, Enhanced: "5.1.1", Recipient: "b@x", Message: "no such user"}, "smtp: RCPT <b@x>: rejected: 550 5.1.1: no such user", false, true},
		{"554 data", &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindRejected, Code: 554}, "smtp: DATA: rejected: 554", false, true},
		{"io", &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindIO, Err: errors.New("broken pipe")}, "smtp: DATA: io: broken pipe", true, false},
		{"protocol", &smtp.Error{Op: smtp.OpEHLO, Kind: smtp.KindProtocol, Message: "bad reply"}, "smtp: EHLO: protocol: bad reply", true, false},
		{"invalid input", &smtp.Error{Op: smtp.OpMAIL, Kind: smtp.KindInvalidInput, Message: "bad address"}, "smtp: MAIL: invalid input: bad address", false, true},
		{"policy", &smtp.Error{Op: smtp.OpSend, Kind: smtp.KindPolicy, Message: "vetoed", Err: errors.New("quota")}, "smtp: send: policy: vetoed: quota", false, true},
		{"auth without code", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Message: "no mechanism"}, "smtp: AUTH: auth: no mechanism", false, false},
		{"auth 535", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 535, Enhanced: "5.7.8"}, "smtp: AUTH: auth: 535 5.7.8", false, false},
		{"auth 454", &smtp.Error{Op: smtp.OpAUTH, Kind: smtp.KindAuth, Code: 454}, "smtp: AUTH: auth: 454", true, false},
		{"outcome unknown", unknown, "smtp: BDAT: io: reply lost: smtp: outcome unknown: the message was committed but its reply was lost: EOF", false, false},
		{"wrapped 550", fmt.Errorf("sending: %w", &smtp.Error{Op: smtp.OpDATA, Kind: smtp.KindRejected, Code: 550}), "sending: smtp: DATA: rejected: 550", false, true},
		{"wrapped unknown", fmt.Errorf("sending: %w", unknown), "", false, false},
		{"closed", &smtp.Error{Op: smtp.OpNOOP, Kind: smtp.KindIO, Err: smtp.ErrClosed}, "smtp: NOOP: io: smtp: session closed", true, false},
		{"other error", errors.New("not ours"), "not ours", true, false},
		{"nil", nil, "", false, false},
		{"refused list", &smtp.Error{Op: smtp.OpRCPT, Kind: smtp.KindRejected, Code: 550, Recipient: "a@x", Message: "2 of 2 refused", Refused: []smtp.RecipientStatus{
			{Address: "a@x", Reply: smtp.Reply{Code: 550, Lines: []string{"no"}}},
			{Address: "b@x", Reply: smtp.Reply{Code: 452, Enhanced: "4.2.2", Lines: []string{"full"}}},
		}}, "smtp: RCPT <a@x>: rejected: 550: 2 of 2 refused (refused: <a@x> 550 no; <b@x> 452 4.2.2 full;)", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.text != "" {
				assert.Equal(t, tt.text, tt.err.Error())
			}
			assert.Equal(t, tt.temporary, smtp.IsTemporary(tt.err), "IsTemporary")
			assert.Equal(t, tt.permanent, smtp.IsPermanent(tt.err), "IsPermanent")
		})
	}
	assert.ErrorIs(t, unknown, smtp.ErrOutcomeUnknown)
	cause := errors.New("cause")
	assert.Same(t, cause, (&smtp.Error{Err: cause}).Unwrap())
	for k, want := range map[smtp.Kind]string{
		smtp.KindIO: "io", smtp.KindProtocol: "protocol", smtp.KindRejected: "rejected",
		smtp.KindAuth: "auth", smtp.KindInvalidInput: "invalid input", smtp.KindPolicy: "policy", smtp.Kind(99): "kind(99)",
	} {
		assert.Equal(t, want, k.String())
	}
}

// --- 10. Audit ----------------------------------------------------------

func TestTranscriptAuditAndSlog(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	audit := &trAudit{}
	slogHook := smtp.SlogAudit(logger)
	hook := func(e smtp.Event) { audit.hook(e); slogHook(e) }
	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com", "bad@example.com"}, AllowPartial: true}
	w1 := trMail + "RCPT TO:<b@example.com>\r\nRCPT TO:<bad@example.com>\r\n" + trBDAT("secret body\r\n")
	srv, c, _ := trConnect(t, &smtp.Options{Audit: hook}, trSteps(
		trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "AUTH PLAIN"),
		fs.ExpectLine("AUTH PLAIN AHVzZXIAaHVudGVyMg=="), fs.Reply("235 2.7.0 ok\r\n"),
		fs.Expect(w1), fs.Reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 Ok: queued as Q1\r\n"),
		fs.ExpectLine("RSET"), fs.Reply("250 2.0.0 ok\r\n"),
		fs.Expect(trMail+trRcpt+trBDAT("x\r\n")), fs.Reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n554 5.7.1 spam\r\n"),
		// The failed BDAT owes an RSET, but only before the next MAIL.
		fs.ExpectLine("NOOP"), fs.Reply("421 4.3.2 shutting down\r\n"),
	)...)
	ctx := trCtx(t)
	require.NoError(t, c.Login(ctx, "user", "hunter2"))
	out, err := c.Send(ctx, env, strings.NewReader("secret body\r\n"))
	require.NoError(t, err)
	assert.Equal(t, "Q1", out.QueueID)
	require.NoError(t, c.Reset(ctx))
	_, err = c.Send(ctx, trEnv, strings.NewReader("x\r\n"))
	require.Error(t, err)
	err = c.Noop(ctx)
	trErr(t, err, smtp.OpNOOP, smtp.KindRejected)
	trEnd(t, srv, c)

	assert.Equal(t, []smtp.EventType{
		smtp.EventConnect, smtp.EventGreeting, smtp.EventEHLO, smtp.EventAuth,
		smtp.EventMailAccepted, smtp.EventRcptAccepted, smtp.EventRcptRefused, smtp.EventMessage,
		smtp.EventReset,
		smtp.EventMailAccepted, smtp.EventRcptAccepted, smtp.EventMessageFailed,
		smtp.EventSessionAborted,
	}, audit.Types())
	ev := audit.Events()
	assert.Equal(t, 220, ev[1].Code)
	assert.Equal(t, 250, ev[2].Code)
	assert.Equal(t, smtp.OpAUTH, ev[3].Op)
	assert.Equal(t, 235, ev[3].Code)
	assert.Equal(t, "PLAIN", ev[3].Mechanism)
	assert.Empty(t, ev[3].Error)
	assert.Equal(t, "a@example.com", ev[4].From)
	assert.Equal(t, "2.1.0", ev[4].Enhanced)
	assert.Equal(t, "b@example.com", ev[5].Recipient)
	// Every event of one session carries its id; the EHLO event names
	// the extensions.
	for _, e := range ev {
		assert.Equal(t, ev[0].Session, e.Session)
	}
	assert.NotZero(t, ev[0].Session)
	assert.Equal(t, []string{"AUTH", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING"}, ev[2].Extensions)
	ev6 := ev[6]
	ev6.Session = 0
	assert.Equal(t, smtp.Event{Type: smtp.EventRcptRefused, Op: smtp.OpRCPT, Code: 550, Enhanced: "5.1.1", Recipient: "bad@example.com"}, ev6)
	assert.Equal(t, "Q1", ev[7].QueueID)
	assert.Equal(t, 250, ev[7].Code)
	assert.Equal(t, 554, ev[11].Code)
	assert.Equal(t, smtp.KindRejected, ev[11].Kind)
	assert.True(t, strings.HasPrefix(ev[11].Error, "smtp: "))
	last := ev[len(ev)-1]
	assert.Equal(t, smtp.KindRejected, last.Kind)
	assert.Equal(t, 421, last.Code)
	assert.Equal(t, smtp.OpNOOP, last.Op)

	log := buf.String()
	for _, want := range []string{
		`level=DEBUG msg="smtp connect" op=greeting`,
		`level=DEBUG msg="smtp auth" op=AUTH code=235 `,
		` mechanism=PLAIN`,
		`level=DEBUG msg="smtp mail" op=MAIL code=250 enhanced=2.1.0 from=a@example.com`,
		`level=WARN msg="smtp rcpt-refused" op=RCPT code=550 enhanced=5.1.1 rcpt=bad@example.com`,
		`level=INFO msg="smtp message" op=BDAT code=250 enhanced=2.0.0 queue_id=Q1`,
		`level=WARN msg="smtp message-failed" op=BDAT code=554 enhanced=5.7.1 kind=rejected`,
		`level=WARN msg="smtp session-aborted" op=NOOP code=421 enhanced=4.3.2 kind=rejected error=`,
	} {
		assert.Contains(t, log, want)
	}
	// Never a credential or message content.
	for _, secret := range []string{"hunter2", "AHVzZXIAaHVudGVyMg==", "secret body"} {
		assert.NotContains(t, log, secret)
		for _, e := range ev {
			assert.NotContains(t, fmt.Sprintf("%+v", e), secret)
		}
	}

	// At Info, the debug events are not even formatted.
	buf.Reset()
	info := smtp.SlogAudit(slog.New(slog.NewTextHandler(&buf, nil)))
	for _, e := range ev {
		info(e)
	}
	assert.NotContains(t, buf.String(), "level=DEBUG")
	assert.Contains(t, buf.String(), `msg="smtp message"`)
	assert.Equal(t, 4, strings.Count(buf.String(), "\n"), buf.String())
}

// --- 11. Context and timeouts ---------------------------------------------

func TestTranscriptContext(t *testing.T) {
	stalled := func() []fs.Step { return trSteps(trHello(), fs.ExpectLine("NOOP"), fs.Stall()) }
	t.Run("deadline", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, stalled()...)
		ctx, cancel := context.WithTimeout(trCtx(t), 100*time.Millisecond)
		defer cancel()
		err := c.Noop(ctx)
		trErr(t, err, smtp.OpNOOP, smtp.KindIO)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, smtp.StateClosed, c.State())
		assert.Equal(t, trEHLO+"NOOP\r\n", trEnd(t, srv, c))
	})
	t.Run("cancel interrupts a blocked read", func(t *testing.T) {
		srv, c, _ := trConnect(t, &smtp.Options{Timeouts: smtp.Timeouts{Command: time.Minute}}, stalled()...)
		ctx, cancel := context.WithCancel(trCtx(t))
		defer cancel()
		timer := time.AfterFunc(50*time.Millisecond, cancel)
		defer timer.Stop()
		err := c.Noop(ctx)
		trErr(t, err, smtp.OpNOOP, smtp.KindIO)
		assert.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, trEHLO+"NOOP\r\n", trEnd(t, srv, c))
	})
	t.Run("Timeouts.Command without a ctx deadline", func(t *testing.T) {
		srv, c, _ := trConnect(t, &smtp.Options{Timeouts: smtp.Timeouts{Command: 200 * time.Millisecond}}, stalled()...)
		err := c.Noop(context.Background())
		trErr(t, err, smtp.OpNOOP, smtp.KindIO)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.True(t, smtp.IsTemporary(err))
		assert.Equal(t, trEHLO+"NOOP\r\n", trEnd(t, srv, c))
	})
	t.Run("Timeouts.Greeting", func(t *testing.T) {
		srv, conn := trDial(t, []fs.Step{fs.Stall()})
		_, err := smtp.Connect(context.Background(), conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true, Timeouts: smtp.Timeouts{Greeting: 200 * time.Millisecond}})
		trErr(t, err, smtp.OpGreeting, smtp.KindIO)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Empty(t, trEnd(t, srv, nil))
	})
	t.Run("cancel during Connect", func(t *testing.T) {
		srv, conn := trDial(t, []fs.Step{fs.Stall()})
		ctx, cancel := context.WithCancel(trCtx(t))
		defer cancel()
		timer := time.AfterFunc(50*time.Millisecond, cancel)
		defer timer.Stop()
		_, err := smtp.Connect(ctx, conn, &smtp.Options{LocalName: "client.example", InsecureAllowPlaintext: true})
		trErr(t, err, smtp.OpGreeting, smtp.KindIO)
		assert.ErrorIs(t, err, context.Canceled)
		assert.Empty(t, trEnd(t, srv, nil))
	})
	t.Run("deadline on the final reply", func(t *testing.T) {
		tx1 := trMail + trRcpt + trBDAT("x\r\n")
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"), fs.Expect(tx1), fs.Reply("250 ok\r\n250 ok\r\n"), fs.Stall())...)
		tx, err := c.WriteTx(trCtx(t), trEnv, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(trCtx(t), 100*time.Millisecond)
		defer cancel()
		_, err = c.ReadTx(ctx, tx)
		trErr(t, err, smtp.OpBDAT, smtp.KindIO)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.True(t, tx.Committed())
		assert.False(t, smtp.TxReplayable(tx))
		assert.Equal(t, trEHLO+tx1, trEnd(t, srv, c))
	})
	t.Run("a finished call leaves no deadline behind", func(t *testing.T) {
		// A context cancelled right after a call must not break the next.
		srv, c, _ := trConnect(t, nil, trSteps(trHello(),
			fs.ExpectLine("NOOP"), fs.Reply("250 ok\r\n"),
			fs.ExpectLine("NOOP"), fs.Sleep(50*time.Millisecond), fs.Reply("250 ok\r\n"),
			trQuit)...)
		ctx, cancel := context.WithCancel(trCtx(t))
		require.NoError(t, c.Noop(ctx))
		cancel()
		require.NoError(t, c.Noop(trCtx(t)))
		require.NoError(t, c.Quit(trCtx(t)))
		assert.Equal(t, trEHLO+"NOOP\r\nNOOP\r\nQUIT\r\n", trEnd(t, srv, c))
	})
}

// --- 12. Pipelined transactions -------------------------------------------

// trTx is the one-write form of a single-recipient BDAT transaction.
func trTx(body string) string { return trMail + trRcpt + trBDAT(body) }

func TestTranscriptWindow(t *testing.T) {
	all := trTx("one\r\n") + trTx("two\r\n") + trTx("three\r\n")
	srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.Expect(all),
		fs.Reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 Ok: queued as Q1\r\n"+
			"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 Ok: queued as Q2\r\n"+
			"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 Ok: queued as Q3\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	var txs []*smtp.Tx
	for _, body := range []string{"one\r\n", "two\r\n", "three\r\n"} {
		tx, err := c.WriteTx(ctx, trEnv, strings.NewReader(body))
		require.NoError(t, err)
		assert.False(t, tx.Committed(), "buffered until a flush")
		assert.False(t, smtp.TxDone(tx))
		txs = append(txs, tx)
	}
	require.NoError(t, c.Flush(ctx))
	for _, tx := range txs {
		assert.True(t, tx.Committed())
	}
	assert.Equal(t, []string{trEHLO, all}, conn.Writes(), "written ahead in one write, nothing read")
	for i, tx := range txs {
		out, err := c.ReadTx(ctx, tx)
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("Q%d", i+1), out.QueueID)
	}
	assert.Equal(t, smtp.StateReady, c.State())
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+all+"QUIT\r\n", trEnd(t, srv, c))
}

// Reading a later transaction first reads the earlier ones on the way.
func TestTranscriptWindowReadOutOfOrder(t *testing.T) {
	all := trTx("one\r\n") + trTx("two\r\n")
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
		fs.Expect(all), fs.Reply("250 ok\r\n250 ok\r\n250 ok: queued as Q1\r\n250 ok\r\n250 ok\r\n250 ok: queued as Q2\r\n"), trQuit)...)
	ctx := trCtx(t)
	tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("one\r\n"))
	require.NoError(t, err)
	tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("two\r\n"))
	require.NoError(t, err)
	out2, err := c.ReadTx(ctx, tx2)
	require.NoError(t, err)
	assert.Equal(t, "Q2", out2.QueueID)
	assert.True(t, smtp.TxDone(tx1))
	out1, err := c.ReadTx(ctx, tx1)
	require.NoError(t, err)
	assert.Equal(t, "Q1", out1.QueueID)
	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, trEHLO+all+"QUIT\r\n", trEnd(t, srv, c))
}

// trWriteThree writes the transactions of the bodies "one", "two" and
// "three" (see trTx) without reading a reply.
func trWriteThree(t *testing.T, ctx context.Context, c *smtp.Client) []*smtp.Tx {
	t.Helper()
	var txs []*smtp.Tx
	for _, body := range []string{"one\r\n", "two\r\n", "three\r\n"} {
		tx, err := c.WriteTx(ctx, trEnv, strings.NewReader(body))
		require.NoError(t, err)
		txs = append(txs, tx)
	}
	return txs
}

// The server answers the second transaction's MAIL with 421, then
// closes: the first was delivered; the second is refused by its own 421
// and may be replayed; the third, whose BDAT LAST was written, got no
// reply after the 421, the server's last word (RFC 5321 §3.8): it was
// never processed and may be replayed too, without the 421 copied onto
// it.
func TestTranscriptWindow421ThenCloseLeavesLaterNeverProcessed(t *testing.T) {
	all := trTx("one\r\n") + trTx("two\r\n") + trTx("three\r\n")
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
		fs.Expect(all),
		fs.Reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 Ok: queued as Q1\r\n421 4.3.2 shutting down\r\n"),
		fs.Close())...)
	ctx := trCtx(t)
	txs := trWriteThree(t, ctx, c)
	out, err := c.ReadTx(ctx, txs[0])
	require.NoError(t, err)
	assert.Equal(t, "Q1", out.QueueID)
	assert.False(t, smtp.TxReplayable(txs[0]))

	_, err = c.ReadTx(ctx, txs[1])
	se := trErr(t, err, smtp.OpMAIL, smtp.KindRejected)
	assert.Equal(t, 421, se.Code)
	assert.True(t, smtp.TxAnswered421(txs[1]))
	assert.True(t, smtp.TxReplayable(txs[1]), "refused by its own 421")
	assert.NotErrorIs(t, err, smtp.ErrOutcomeUnknown)

	_, err = c.ReadTx(ctx, txs[2])
	se = trErr(t, err, smtp.OpMAIL, smtp.KindIO)
	assert.Zero(t, se.Code, "another transaction's 421 is not this one's reply")
	assert.NotErrorIs(t, err, smtp.ErrOutcomeUnknown)
	assert.True(t, txs[2].Committed())
	assert.False(t, smtp.TxAnswered421(txs[2]))
	assert.True(t, smtp.TxReplayable(txs[2]), "no reply after the 421: never processed, though committed")

	assert.Equal(t, smtp.StateClosed, c.State())
	_, err = c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
	assert.ErrorIs(t, err, smtp.ErrClosed)
	assert.Equal(t, trEHLO+all, trEnd(t, srv, c))
}

// A server that answers one transaction's MAIL with 421 and goes on
// answering (as go-smtp does when a backend returns a 421, and busy
// servers do): the transactions committed behind it get their real
// outcomes, the one refused gets its 421, one whose commit point had not
// left is never committed (and is replayable), nothing more is written,
// and the session then closes.
func TestTranscript421WithoutClose(t *testing.T) {
	t.Run("CHUNKING", func(t *testing.T) {
		all := trTx("one\r\n") + trTx("two\r\n") + trTx("three\r\n")
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
			fs.Expect(all),
			fs.Reply("421 4.3.2 busy\r\n502 5.5.1 no MAIL\r\n502 5.5.1 no RCPT\r\n"+
				"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as Q2\r\n"+
				"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as Q3\r\n"),
			fs.Stall())...)
		ctx := trCtx(t)
		txs := trWriteThree(t, ctx, c)
		_, err := c.ReadTx(ctx, txs[0])
		se := trErr(t, err, smtp.OpMAIL, smtp.KindRejected)
		assert.Equal(t, 421, se.Code)
		assert.True(t, smtp.TxReplayable(txs[0]))
		_, err = c.WriteTx(ctx, trEnv, strings.NewReader("four\r\n"))
		assert.ErrorIs(t, err, smtp.ErrClosed, "nothing is written after a 421")
		for i, want := range []string{"Q2", "Q3"} {
			out, err := c.ReadTx(ctx, txs[i+1])
			require.NoError(t, err, "tx%d: its real outcome", i+2)
			assert.Equal(t, want, out.QueueID)
			assert.False(t, smtp.TxReplayable(txs[i+1]))
		}
		assert.Equal(t, smtp.StateClosed, c.State(), "closed once the committed replies are read")
		assert.Equal(t, trEHLO+all, trEnd(t, srv, c))
	})
	t.Run("DATA", func(t *testing.T) {
		// tx1's MAIL gets 421; the server goes on with DATA's refusal
		// and tx2's MAIL, RCPT and DATA... but tx2's body is never
		// written: its 354 is not even read.
		one := trMail + trRcpt + "DATA\r\n"
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "ENHANCEDSTATUSCODES"),
			fs.Expect(one),
			fs.Reply("421 4.3.2 busy\r\n502 5.5.1 no MAIL\r\n503 5.5.1 no RCPT\r\n"),
			fs.Stall())...)
		ctx := trCtx(t)
		tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("one\r\n"))
		require.NoError(t, err)
		_, err = c.WriteTx(ctx, trEnv, strings.NewReader("two\r\n"))
		assert.ErrorIs(t, err, smtp.ErrClosed, "tx2 is refused before a byte of it is written")
		_, err = c.ReadTx(ctx, tx1)
		se := trErr(t, err, smtp.OpMAIL, smtp.KindRejected)
		assert.Equal(t, 421, se.Code)
		assert.True(t, smtp.TxReplayable(tx1))
		assert.Equal(t, smtp.StateClosed, c.State())
		assert.Equal(t, trEHLO+one, trEnd(t, srv, c))
	})
}

// The connection drops after the commit point was written and before its
// reply: the outcome is unknown and the message must not be replayed.
func TestTranscriptDroppedAfterCommit(t *testing.T) {
	all := trTx("one\r\n") + trTx("two\r\n")
	srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"), fs.Expect(all), fs.Reply("250 ok\r\n250 ok\r\n"), fs.Close())...)
	ctx := trCtx(t)
	tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("one\r\n"))
	require.NoError(t, err)
	tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("two\r\n"))
	require.NoError(t, err)
	for _, tx := range []*smtp.Tx{tx1, tx2} {
		_, err = c.ReadTx(ctx, tx)
		trErr(t, err, smtp.OpBDAT, smtp.KindIO)
		assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.True(t, tx.Committed())
		assert.False(t, smtp.TxReplayable(tx))
		assert.False(t, smtp.IsTemporary(err), "retrying may deliver twice")
		assert.False(t, smtp.IsPermanent(err))
	}
	assert.Equal(t, trEHLO+all, trEnd(t, srv, c))
}

// The connection drops before the commit point: nothing can have been
// delivered, and the transaction may be replayed.
func TestTranscriptDroppedBeforeCommit(t *testing.T) {
	t.Run("BDAT, waiting for RCPT replies", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"), fs.Expect(trMail+trRcpt2), fs.Close())...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trTwo, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx)
		trErr(t, err, smtp.OpMAIL, smtp.KindIO)
		assert.False(t, tx.Committed())
		assert.True(t, smtp.TxReplayable(tx))
		assert.NotErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.True(t, smtp.IsTemporary(err))
		assert.Equal(t, trEHLO+trMail+trRcpt2, trEnd(t, srv, c))
	})
	t.Run("DATA, before the 354", func(t *testing.T) {
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"), fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n250 ok\r\n"), fs.Close())...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx)
		trErr(t, err, smtp.OpDATA, smtp.KindIO)
		assert.False(t, tx.Committed())
		assert.True(t, smtp.TxReplayable(tx))
		assert.Equal(t, trEHLO+trMail+trRcpt+"DATA\r\n", trEnd(t, srv, c))
	})
	t.Run("DATA, a 354 for a refused envelope", func(t *testing.T) {
		// After a 354 only a dropped connection keeps the message from
		// being delivered to a recipient the server said it refused.
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"), fs.Expect(trMail+trRcpt+"DATA\r\n"), fs.Reply("250 ok\r\n550 no\r\n354 go anyway\r\n"), fs.Stall())...)
		ctx := trCtx(t)
		tx, err := c.WriteTx(ctx, trEnv, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx)
		se := trErr(t, err, smtp.OpRCPT, smtp.KindRejected)
		assert.Equal(t, 550, se.Code)
		assert.False(t, tx.Committed())
		assert.Equal(t, smtp.StateClosed, c.State())
		assert.Equal(t, trEHLO+trMail+trRcpt+"DATA\r\n", trEnd(t, srv, c))
	})
}

// A server that closes an idle session (with or without an unsolicited
// 421) is noticed before the next transaction writes a byte.
func TestTranscriptIdleSession(t *testing.T) {
	t.Run("unsolicited 421", func(t *testing.T) {
		t.Parallel()
		audit := &trAudit{}
		srv, c, conn := trConnect(t, &smtp.Options{Audit: audit.hook}, trSteps(trHello("PIPELINING", "CHUNKING"),
			fs.Sleep(1100*time.Millisecond), fs.Reply("421 4.4.2 mx.example idle timeout\r\n"), fs.Close())...)
		trWait(t, srv.HungUp(), "the server to hang up")
		tx, err := c.WriteTx(trCtx(t), trEnv, strings.NewReader("x\r\n"))
		assert.Nil(t, tx)
		assert.ErrorIs(t, err, smtp.ErrClosed)
		var cause *smtp.Error
		require.ErrorAs(t, c.Err(), &cause)
		assert.Equal(t, 421, cause.Code)
		assert.Equal(t, smtp.StateClosed, c.State())
		assert.Equal(t, []string{trEHLO}, conn.Writes(), "nothing written")
		assert.Equal(t, trEHLO, trEnd(t, srv, c))
		events := audit.Events()
		assert.Equal(t, smtp.EventSessionAborted, events[len(events)-1].Type)
		assert.Equal(t, 421, events[len(events)-1].Code)
	})
	t.Run("closed without a word", func(t *testing.T) {
		t.Parallel()
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"), fs.Sleep(1100*time.Millisecond), fs.Close())...)
		trWait(t, srv.HungUp(), "the server to hang up")
		_, err := c.Send(trCtx(t), trEnv, strings.NewReader("x\r\n"))
		assert.ErrorIs(t, err, smtp.ErrClosed)
		assert.Equal(t, []string{trEHLO}, conn.Writes(), "nothing written")
		assert.Equal(t, trEHLO, trEnd(t, srv, c))
	})
	t.Run("still alive", func(t *testing.T) {
		t.Parallel()
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"), fs.Expect(trTx("x\r\n")), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"), trQuit)...)
		time.Sleep(1100 * time.Millisecond)
		_, err := c.Send(trCtx(t), trEnv, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		require.NoError(t, c.Quit(trCtx(t)))
		assert.Equal(t, trEHLO+trTx("x\r\n")+"QUIT\r\n", trEnd(t, srv, c))
	})
}

// A window of all-or-nothing BDAT transactions: each body waits for its
// RCPT replies and leaves with the next transaction's commands.
func TestTranscriptWindowDeferredBDAT(t *testing.T) {
	srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING", "CHUNKING"),
		fs.Expect(trMail+trRcpt2), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
		fs.Expect(trBDAT("one\r\n")+trMail+trRcpt2), fs.Reply("250 ok: queued as Q1\r\n250 ok\r\n250 ok\r\n250 ok\r\n"),
		fs.Expect(trBDAT("two\r\n")), fs.Reply("250 ok: queued as Q2\r\n"),
		trQuit)...)
	ctx := trCtx(t)
	tx1, err := c.WriteTx(ctx, trTwo, strings.NewReader("one\r\n"))
	require.NoError(t, err)
	tx2, err := c.WriteTx(ctx, trTwo, strings.NewReader("two\r\n"))
	require.NoError(t, err)
	// Flush finishes what only waited for replies: tx2's body too.
	require.NoError(t, c.Flush(ctx))
	assert.True(t, tx1.Committed())
	assert.True(t, tx2.Committed())
	out, err := c.ReadTx(ctx, tx1)
	require.NoError(t, err)
	assert.Equal(t, "Q1", out.QueueID)
	out, err = c.ReadTx(ctx, tx2)
	require.NoError(t, err)
	assert.Equal(t, "Q2", out.QueueID)
	require.NoError(t, c.Quit(ctx))
	trEnd(t, srv, c)
	assert.Contains(t, conn.Writes(), trBDAT("one\r\n")+trMail+trRcpt2)
}

// --- 13. DATA-mode pipelining ---------------------------------------------

// With PIPELINING and no CHUNKING, the next transaction's MAIL, RCPT and
// DATA leave in the same write as the previous body and its final dot.
func TestTranscriptDataPipelining(t *testing.T) {
	t.Run("single recipient", func(t *testing.T) {
		cmds := trMail + trRcpt + "DATA\r\n"
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(cmds), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"),
			fs.Expect("body one\r\n.\r\n"+cmds), fs.Reply("250 ok: queued as Q1\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
			fs.Expect("body two\r\n.\r\n"), fs.Reply("250 ok: queued as Q2\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("body one\r\n"))
		require.NoError(t, err)
		assert.False(t, tx1.Committed(), "the body waits for the 354")
		tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("body two\r\n"))
		require.NoError(t, err)
		// Flush finishes what only waited for replies: tx2's body
		// leaves after its 354.
		require.NoError(t, c.Flush(ctx))
		assert.True(t, tx1.Committed())
		assert.True(t, tx2.Committed())
		assert.Equal(t, []string{trEHLO, cmds, "body one\r\n.\r\n" + cmds, "body two\r\n.\r\n"}, conn.Writes())
		out, err := c.ReadTx(ctx, tx1)
		require.NoError(t, err)
		assert.Equal(t, "Q1", out.QueueID)
		out, err = c.ReadTx(ctx, tx2)
		require.NoError(t, err)
		assert.Equal(t, "Q2", out.QueueID)
		require.NoError(t, c.Quit(ctx))
		assert.Equal(t, trEHLO+cmds+"body one\r\n.\r\n"+cmds+"body two\r\n.\r\nQUIT\r\n", trEnd(t, srv, c))
	})
	t.Run("several recipients", func(t *testing.T) {
		env := trMail + trRcpt2
		srv, c, conn := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(env), fs.Reply("250 ok\r\n250 ok\r\n250 ok\r\n"),
			fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"),
			fs.Expect("body one\r\n.\r\n"+env), fs.Reply("250 ok: queued as Q1\r\n250 ok\r\n250 ok\r\n250 ok\r\n"),
			fs.ExpectLine("DATA"), fs.Reply("354 go\r\n"),
			fs.Expect("body two\r\n.\r\n"), fs.Reply("250 ok: queued as Q2\r\n"),
			trQuit)...)
		ctx := trCtx(t)
		tx1, err := c.WriteTx(ctx, trTwo, strings.NewReader("body one\r\n"))
		require.NoError(t, err)
		tx2, err := c.WriteTx(ctx, trTwo, strings.NewReader("body two\r\n"))
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx1)
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx2)
		require.NoError(t, err)
		require.NoError(t, c.Quit(ctx))
		trEnd(t, srv, c)
		assert.Equal(t, []string{trEHLO, env, "DATA\r\n", "body one\r\n.\r\n" + env, "DATA\r\n", "body two\r\n.\r\n", "QUIT\r\n"}, conn.Writes())
	})
	t.Run("dropped after the shared write", func(t *testing.T) {
		cmds := trMail + trRcpt + "DATA\r\n"
		srv, c, _ := trConnect(t, nil, trSteps(trHello("PIPELINING"),
			fs.Expect(cmds), fs.Reply("250 ok\r\n250 ok\r\n354 go\r\n"),
			fs.Expect("one\r\n.\r\n"+cmds), fs.Close())...)
		ctx := trCtx(t)
		tx1, err := c.WriteTx(ctx, trEnv, strings.NewReader("one\r\n"))
		require.NoError(t, err)
		tx2, err := c.WriteTx(ctx, trEnv, strings.NewReader("two\r\n"))
		require.NoError(t, err)
		_, err = c.ReadTx(ctx, tx1)
		assert.ErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.False(t, smtp.TxReplayable(tx1))
		_, err = c.ReadTx(ctx, tx2)
		assert.NotErrorIs(t, err, smtp.ErrOutcomeUnknown)
		assert.True(t, smtp.TxReplayable(tx2))
		trEnd(t, srv, c)
	})
}
