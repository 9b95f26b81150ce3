package sender_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/smtpkit/smtpkit/sender"
)

// TestCredentialsPrintedOrLoggedHideSecret: a program that prints or logs
// its Credentials, with any verb or slog handler, never shows the
// secret; the username and mechanism stay readable.
func TestCredentialsPrintedOrLoggedHideSecret(t *testing.T) {
	const secret = "hunter2-very-secret"
	cr := sender.Credentials{Mechanism: "PLAIN", Username: "me@example.com", Secret: secret}
	type holder struct {
		C  sender.Credentials
		P  *sender.Credentials
		Cs []sender.Credentials
	}
	h := holder{C: cr, P: &cr, Cs: []sender.Credentials{cr}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%T %v"} {
		for _, v := range []any{cr, &cr, h, &h} {
			out := fmt.Sprintf(verb, v)
			assert.NotContains(t, out, secret, "%s of %T", verb, v)
			if verb == "%v" || verb == "%+v" || verb == "%#v" || verb == "%s" {
				assert.Contains(t, out, "[redacted]", "%s of %T: %s", verb, v, out)
			}
		}
	}
	assert.Equal(t, "{Mechanism:PLAIN Username:me@example.com Secret:[redacted]}", cr.String())
	assert.Equal(t, `sender.Credentials{Mechanism:"PLAIN", Username:"me@example.com", Secret:"[redacted]"}`, fmt.Sprintf("%#v", cr))
	assert.Equal(t, "{Mechanism: Username:u Secret:}", sender.Credentials{Username: "u"}.String(), "an empty secret shows empty")

	var text, js bytes.Buffer
	for _, l := range []*slog.Logger{slog.New(slog.NewTextHandler(&text, nil)), slog.New(slog.NewJSONHandler(&js, nil))} {
		l.Info("login", "creds", cr, "ptr", &cr)
		l.Info("login", slog.Any("creds", cr))
	}
	for _, out := range []string{text.String(), js.String()} {
		assert.NotContains(t, out, secret)
		assert.Contains(t, out, "me@example.com")
		assert.Contains(t, out, "[redacted]")
	}
	var rec map[string]any
	line, _, _ := bytes.Cut(js.Bytes(), []byte("\n"))
	require.NoError(t, json.Unmarshal(line, &rec))
	assert.Equal(t, map[string]any{"mechanism": "PLAIN", "username": "me@example.com", "secret": "[redacted]"}, rec["creds"])
}

// TestCredentialsMarshalledAsJSONHideSecret: a program that dumps its
// Credentials (or a struct holding them, by value or pointer) with
// encoding/json gets the mechanism and username, and the secret
// redacted.
func TestCredentialsMarshalledAsJSONHideSecret(t *testing.T) {
	const secret = "hunter2-very-secret"
	cr := sender.Credentials{Mechanism: "PLAIN", Username: "me@example.com", Secret: secret}
	for _, v := range []any{cr, &cr, struct{ C sender.Credentials }{cr}, map[string]*sender.Credentials{"c": &cr}} {
		out, err := json.Marshal(v)
		require.NoError(t, err)
		assert.NotContains(t, string(out), secret, "%T", v)
		assert.Contains(t, string(out), `"Secret":"[redacted]"`, "%T", v)
	}
	out, err := json.Marshal(cr)
	require.NoError(t, err)
	assert.JSONEq(t, `{"Mechanism":"PLAIN","Username":"me@example.com","Secret":"[redacted]"}`, string(out))
	out, err = json.Marshal(sender.Credentials{Username: "u"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"Mechanism":"","Username":"u","Secret":""}`, string(out), "an empty secret shows empty")
}
