package testpeers

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mailpitStartTimeout bounds Mailpit's start-up.
const mailpitStartTimeout = 30 * time.Second

// MailpitOptions configures [Mailpit]. The zero value is a plaintext SMTP
// server without AUTH.
type MailpitOptions struct {
	// Mode is Plain (no TLS), StartTLS (STARTTLS offered, optional unless
	// RequireSTARTTLS) or ImplicitTLS (--smtp-require-tls).
	Mode TLSMode
	// RequireSTARTTLS makes STARTTLS mandatory in StartTLS mode
	// (--smtp-require-starttls).
	RequireSTARTTLS bool
	// Cert is the certificate to present; NewCert(t) when nil and Mode is
	// not Plain.
	Cert *Cert
	// Auth maps users to passwords accepted by AUTH PLAIN and LOGIN
	// (written to an --smtp-auth-file). In Plain mode Mailpit refuses to
	// start with AUTH unless AllowInsecureAuth is set too.
	Auth map[string]string
	// AcceptAnyAuth accepts any user and password (--smtp-auth-accept-any).
	// Without it and without Auth, Mailpit offers no AUTH.
	AcceptAnyAuth bool
	// AllowInsecureAuth offers AUTH without TLS
	// (--smtp-auth-allow-insecure); not allowed with ImplicitTLS.
	AllowInsecureAuth bool
	// EnableChaos allows [MailpitServer.SetChaos] (--enable-chaos).
	EnableChaos bool
	// ChaosTriggers sets chaos at start, e.g.
	// "Sender:451:20,Recipient:550:10,Authentication:535:5".
	ChaosTriggers string
	// MaxMessageSizeMB is --max-message-size in MB; Mailpit's 50 when 0.
	MaxMessageSizeMB int
	// MaxRecipients is --smtp-max-recipients; Mailpit's 100 when 0.
	MaxRecipients int
	// Args are extra command-line flags.
	Args []string
}

// MailpitServer is a Mailpit process started by [Mailpit].
type MailpitServer struct {
	proc     *Proc
	smtpAddr string
	httpAddr string
	cert     *Cert
	implicit bool
	client   *http.Client
}

// MailpitMessage is a message summary from Mailpit's API.
type MailpitMessage struct {
	// ID is Mailpit's ID, for [MailpitServer.Raw].
	ID string
	// MessageID is the Message-ID header without angle brackets.
	MessageID string
	// From is the From header's address.
	From string
	// To, Cc and Bcc are the header addresses; envelope recipients that
	// are in no header are listed in Bcc.
	To, Cc, Bcc []string
	// Subject is the decoded Subject header.
	Subject string
	// Size is the stored size in bytes, Mailpit's own headers included.
	Size int64
	// Username is the SMTP AUTH user, if any.
	Username string
	// Created is when Mailpit received it.
	Created time.Time
}

// Mailpit starts Mailpit (see [Require] for where the binary is found) on
// free loopback ports with its own database in a temporary directory, waits
// until both its SMTP and HTTP ports answer, and kills it when the test
// ends.
//
// Mailpit advertises SIZE, STARTTLS, AUTH PLAIN LOGIN, ENHANCEDSTATUSCODES,
// 8BITMIME and SMTPUTF8; not PIPELINING nor CHUNKING. It prepends
// Return-Path and Received headers to every stored message.
func Mailpit(t testing.TB, opts MailpitOptions) *MailpitServer {
	t.Helper()
	bin := Require(t, ProgMailpit)
	if opts.Mode == ImplicitTLS && opts.AllowInsecureAuth {
		t.Fatalf("testpeers: Mailpit refuses --smtp-auth-allow-insecure with implicit TLS")
	}
	started := time.Now()
	dir := t.TempDir()
	m := &MailpitServer{
		client:   &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		implicit: opts.Mode == ImplicitTLS,
	}
	t.Cleanup(m.client.CloseIdleConnections)

	var flags []string
	flags = append(flags, "--disable-version-check", "--smtp-disable-rdns",
		"--database", filepath.Join(dir, "mailpit.db"), "--max", "0")
	if opts.Mode != Plain {
		m.cert = opts.Cert
		if m.cert == nil {
			m.cert = NewCert(t)
		}
		flags = append(flags, "--smtp-tls-cert", m.cert.CertFile, "--smtp-tls-key", m.cert.KeyFile)
		switch {
		case opts.Mode == ImplicitTLS:
			flags = append(flags, "--smtp-require-tls")
		case opts.RequireSTARTTLS:
			flags = append(flags, "--smtp-require-starttls")
		}
	}
	if len(opts.Auth) > 0 {
		users := make([]string, 0, len(opts.Auth))
		for u := range opts.Auth {
			users = append(users, u)
		}
		sort.Strings(users)
		var b strings.Builder
		for _, u := range users {
			fmt.Fprintf(&b, "%s:%s\n", u, opts.Auth[u])
		}
		path := filepath.Join(dir, "smtp-auth")
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		flags = append(flags, "--smtp-auth-file", path)
	} else if opts.AcceptAnyAuth {
		flags = append(flags, "--smtp-auth-accept-any")
	}
	if opts.AllowInsecureAuth {
		flags = append(flags, "--smtp-auth-allow-insecure")
	}
	if opts.EnableChaos {
		flags = append(flags, "--enable-chaos")
	}
	if opts.ChaosTriggers != "" {
		flags = append(flags, "--chaos-triggers", opts.ChaosTriggers)
	}
	if opts.MaxMessageSizeMB > 0 {
		flags = append(flags, "--max-message-size", strconv.Itoa(opts.MaxMessageSizeMB))
	}
	if opts.MaxRecipients > 0 {
		flags = append(flags, "--smtp-max-recipients", strconv.Itoa(opts.MaxRecipients))
	}
	flags = append(flags, opts.Args...)

	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatalf("testpeers: %v", err)
		}
		m.smtpAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		m.httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		argv := append([]string{bin, "--smtp", m.smtpAddr, "--listen", m.httpAddr}, flags...)
		logPath := filepath.Join(dir, fmt.Sprintf("mailpit-%d.log", attempt))
		proc, err := startProc(argv, cleanEnv(), logPath)
		if err != nil {
			t.Fatalf("testpeers: starting %s: %v", bin, err)
		}
		proc.addr = m.smtpAddr
		m.proc = proc
		t.Cleanup(func() {
			if err := proc.Stop(); err != nil {
				t.Errorf("testpeers: stopping Mailpit: %v", err)
			}
		})
		lastErr = m.waitReady(time.Now().Add(mailpitStartTimeout))
		if lastErr == nil {
			t.Logf("testpeers: Mailpit ready in %v: SMTP %s (%v), HTTP %s",
				time.Since(started).Round(time.Millisecond), m.smtpAddr, opts.Mode, m.URL())
			return m
		}
		_ = proc.Stop()
		if !addrInUse(proc.Output()) {
			break
		}
		t.Logf("testpeers: Mailpit port taken, retrying with new ports")
	}
	t.Fatalf("testpeers: starting Mailpit %v: %v\n--- log ---\n%s", argv0(m.proc), lastErr, tail(m.proc.Output(), 4000))
	return nil
}

func argv0(p *Proc) []string {
	if p == nil {
		return nil
	}
	return p.cmd.Args
}

// waitReady waits until the HTTP API and the SMTP port answer.
func (m *MailpitServer) waitReady(deadline time.Time) error {
	alive := func() error {
		if exited, err := m.proc.Exited(); exited {
			return fmt.Errorf("mailpit exited: %v", err)
		}
		return nil
	}
	for {
		if err := alive(); err != nil {
			return err
		}
		resp, err := m.client.Get(m.URL() + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("HTTP API at %s not ready: %v", m.httpAddr, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	var tlsConf *tls.Config
	if m.implicit {
		tlsConf = m.cert.ClientConfig()
		tlsConf.ServerName = "localhost"
	}
	return waitBanner(m.smtpAddr, tlsConf, deadline, alive)
}

// SMTPAddr returns the SMTP "host:port".
func (m *MailpitServer) SMTPAddr() string { return m.smtpAddr }

// HTTPAddr returns the web UI and API "host:port".
func (m *MailpitServer) HTTPAddr() string { return m.httpAddr }

// URL returns the base URL of the web UI and API, "http://127.0.0.1:PORT".
func (m *MailpitServer) URL() string { return "http://" + m.httpAddr }

// Cert returns the certificate Mailpit presents, or nil in Plain mode.
func (m *MailpitServer) Cert() *Cert { return m.cert }

// Log returns what Mailpit has logged so far.
func (m *MailpitServer) Log() string { return m.proc.Output() }

// Stop kills Mailpit and waits for it. It is called when the test ends;
// calling it again is harmless.
func (m *MailpitServer) Stop() error { return m.proc.Stop() }

// api performs an API request and returns the body of a 2xx response.
func (m *MailpitServer) api(method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, m.URL()+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mailpit %s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("mailpit %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("mailpit %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	return data, nil
}

// apiAddress is an address in Mailpit's JSON.
type apiAddress struct{ Name, Address string }

func addrs(as []apiAddress) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.Address)
	}
	return out
}

// Messages returns the summaries of all stored messages, oldest first
// (GET /api/v1/messages).
func (m *MailpitServer) Messages() ([]MailpitMessage, error) {
	var out []MailpitMessage
	const page = 1000
	for start := 0; ; start += page {
		data, err := m.api(http.MethodGet, fmt.Sprintf("/api/v1/messages?start=%d&limit=%d", start, page), nil)
		if err != nil {
			return nil, err
		}
		var resp struct {
			MessagesCount int `json:"messages_count"`
			Messages      []struct {
				ID, MessageID, Subject, Username string
				From                             *apiAddress
				To, Cc, Bcc                      []apiAddress
				Size                             int64
				Created                          time.Time
			} `json:"messages"`
		}
		if err := json.Unmarshal(data, &resp); err != nil {
			return nil, fmt.Errorf("mailpit messages: %w", err)
		}
		for _, x := range resp.Messages {
			mm := MailpitMessage{
				ID: x.ID, MessageID: x.MessageID, Subject: x.Subject, Username: x.Username,
				To: addrs(x.To), Cc: addrs(x.Cc), Bcc: addrs(x.Bcc), Size: x.Size, Created: x.Created,
			}
			if x.From != nil {
				mm.From = x.From.Address
			}
			out = append(out, mm)
		}
		if len(resp.Messages) < page || start+page >= resp.MessagesCount {
			break
		}
	}
	// The API lists newest first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Raw returns a stored message byte for byte, as Mailpit keeps it: what the
// client sent after dot-unstuffing, with Mailpit's Return-Path and Received
// headers prepended (GET /api/v1/message/{ID}/raw).
func (m *MailpitServer) Raw(id string) ([]byte, error) {
	return m.api(http.MethodGet, "/api/v1/message/"+id+"/raw", nil)
}

// StripFields removes from the start of a raw message the header fields
// named (with their continuation lines), as long as it starts with one of
// them: what Mailpit puts before a message (Return-Path, Received) comes
// off, and the message as the client sent it remains.
func StripFields(raw []byte, names ...string) []byte {
	for {
		named := false
		for _, n := range names {
			if len(raw) > len(n) && raw[len(n)] == ':' && strings.EqualFold(string(raw[:len(n)]), n) {
				named = true
				break
			}
		}
		if !named {
			return raw
		}
		for {
			i := bytes.Index(raw, []byte("\r\n"))
			if i < 0 {
				return nil
			}
			raw = raw[i+2:]
			if len(raw) == 0 || (raw[0] != ' ' && raw[0] != '\t') {
				break
			}
		}
	}
}

// DeleteAll deletes every stored message (DELETE /api/v1/messages).
func (m *MailpitServer) DeleteAll() error {
	_, err := m.api(http.MethodDelete, "/api/v1/messages", nil)
	return err
}

// SetChaos sets the chaos triggers (PUT /api/v1/chaos), for example
// {"Recipient":{"ErrorCode":451,"Probability":50}}; triggers not named are
// reset. It needs EnableChaos. It returns the resulting configuration.
func (m *MailpitServer) SetChaos(jsonTriggers string) (string, error) {
	data, err := m.api(http.MethodPut, "/api/v1/chaos", []byte(jsonTriggers))
	return string(data), err
}

// WaitMessages waits until at least n messages are stored and returns
// them, oldest first; after timeout it returns what there is and an error.
func (m *MailpitServer) WaitMessages(n int, timeout time.Duration) ([]MailpitMessage, error) {
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := m.Messages()
		if err == nil && len(msgs) >= n {
			return msgs, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("testpeers: %d of %d messages in Mailpit after %v", len(msgs), n, timeout)
			}
			return msgs, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
