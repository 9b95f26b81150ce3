package smtp_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/smtp"
)

// TestDocumentedCallsOnReturnedValues: every call the docs show, written
// as a user writes it, on the values the API returns (a method on a
// returned value, not on a variable, needs a value receiver), against a
// real server; and the values returned are the caller's own copies.
func TestDocumentedCallsOnReturnedValues(t *testing.T) {
	_, c := connectGoSMTP(t, testpeers.GoSMTPOptions{Mode: testpeers.ImplicitTLS, Auth: map[string]string{"user": "pass"}}, nil)
	ctx := testCtx(t)

	// Capabilities and Greeting, called on the returned values.
	assert.True(t, c.Capabilities().Has("PIPELINING"))
	assert.True(t, c.Capabilities().Has("pipelining"), "case-insensitive")
	assert.True(t, c.Capabilities().HasAuth("PLAIN"))
	assert.False(t, c.Capabilities().HasAuth("XOAUTH2"))
	assert.NotEmpty(t, c.Greeting().Text())
	assert.True(t, strings.HasPrefix(c.Greeting().String(), "220 "), c.Greeting().String())
	assert.True(t, c.IsTLS())
	assert.Equal(t, "ready", c.State().String())
	assert.NoError(t, c.Err())

	// The returned capabilities and greeting are copies: changing them
	// changes nothing in the session (Login would otherwise pick from
	// the caller's list).
	caps := c.Capabilities()
	caps.Auth[0] = "XOAUTH2"
	clear(caps.Extensions)
	g := c.Greeting()
	g.Lines[0] = "changed"
	assert.True(t, c.Capabilities().HasAuth("PLAIN"))
	assert.False(t, c.Capabilities().HasAuth("XOAUTH2"))
	assert.True(t, c.Capabilities().Has("PIPELINING"))
	assert.NotEqual(t, "changed", c.Greeting().Lines[0])

	require.NoError(t, c.Login(ctx, "user", "pass"))
	require.NoError(t, c.Noop(ctx))
	require.NoError(t, c.Reset(ctx))

	env := smtp.Envelope{From: "a@example.com", To: []string{"b@example.com"}}
	out, err := c.Send(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	require.NoError(t, err)
	assert.Equal(t, 250, out.Reply.Code)
	assert.NotEmpty(t, out.Reply.Text())
	assert.NotEmpty(t, out.Reply.String())
	assert.Equal(t, []string{"b@example.com"}, out.Accepted)

	// The two halves, as the docs show them.
	tx, err := c.WriteTx(ctx, env, strings.NewReader("Subject: two\r\n\r\nhalves\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.Flush(ctx))
	out, err = c.ReadTx(ctx, tx)
	require.NoError(t, err)
	assert.True(t, tx.Committed())
	assert.Equal(t, 250, out.Reply.Code)

	// An error, classified, as the docs show it.
	_, err = c.Send(ctx, smtp.Envelope{From: "a@example.com"}, strings.NewReader("x\r\n"))
	var se *smtp.Error
	require.True(t, errors.As(err, &se))
	assert.Equal(t, smtp.KindInvalidInput, se.Kind)
	assert.Equal(t, "invalid input", se.Kind.String())
	assert.Equal(t, "permanent", smtp.Classify(err).String())
	assert.True(t, smtp.IsPermanent(err))
	assert.NotEmpty(t, se.Error())

	require.NoError(t, c.Quit(ctx))
	assert.Equal(t, "closed", c.State().String())
}
