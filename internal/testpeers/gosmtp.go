package testpeers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TLSMode says how a peer offers TLS.
type TLSMode int

const (
	// Plain offers no TLS at all.
	Plain TLSMode = iota
	// StartTLS listens in plaintext and offers STARTTLS.
	StartTLS
	// ImplicitTLS speaks TLS from the first byte (SMTPS, port 465 style).
	ImplicitTLS
)

// String returns the mode's name.
func (m TLSMode) String() string {
	switch m {
	case Plain:
		return "plain"
	case StartTLS:
		return "starttls"
	case ImplicitTLS:
		return "implicit-tls"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// GoSMTPOptions configures [GoSMTP]. The zero value is a plaintext server on
// 127.0.0.1 that accepts any mail without AUTH.
type GoSMTPOptions struct {
	// Mode selects plaintext, STARTTLS or implicit TLS.
	Mode TLSMode
	// Cert is the certificate to present; NewCert(t) when nil and Mode is
	// not Plain.
	Cert *Cert
	// IPv6 listens on [::1] instead of 127.0.0.1.
	IPv6 bool
	// Pipe serves in-memory pipes made by DialPipe instead of listening
	// on loopback: for tests inside a testing/synctest bubble. Addr is
	// then "pipe".
	Pipe bool
	// Domain is the name in the greeting; "localhost" when empty.
	Domain string

	// Auth maps user names to passwords accepted by AUTH PLAIN and LOGIN.
	Auth map[string]string
	// Tokens maps user names to bearer tokens accepted by AUTH XOAUTH2 and
	// OAUTHBEARER. A rejected token gets the [OAuthError] challenge and then
	// 535 5.7.8, as Gmail does.
	Tokens map[string]string
	// AuthRequired rejects MAIL FROM with 502 5.7.0 until the client has
	// authenticated.
	AuthRequired bool
	// AllowInsecureAuth offers AUTH without TLS.
	AllowInsecureAuth bool

	// EnableSMTPUTF8, EnableDSN, EnableBINARYMIME and EnableREQUIRETLS
	// advertise the extensions of these names.
	EnableSMTPUTF8, EnableDSN, EnableBINARYMIME, EnableREQUIRETLS bool
	// MaxMessageBytes is advertised with SIZE and enforced (552 5.3.4);
	// 0 means no limit.
	MaxMessageBytes int64
	// MaxRecipients limits RCPT TO per transaction (452 4.5.3); 0 means no
	// limit.
	MaxRecipients int
	// MaxLineLength limits command and data lines; go-smtp's 2000 when 0.
	MaxLineLength int
	// ReadTimeout and WriteTimeout bound each read and write; 0 means none.
	ReadTimeout, WriteTimeout time.Duration

	// RejectSession, if it returns an error, refuses the session at
	// EHLO/HELO (451 4.0.0, or the code of an *smtp.SMTPError).
	RejectSession func(hostname string) error
	// RejectMail, if it returns an error, refuses MAIL FROM (451 4.0.0, or
	// the code of an *smtp.SMTPError).
	RejectMail func(from string, opts *smtp.MailOptions) error
	// RejectMailIn is RejectMail told how many MAIL commands the session
	// received before this one (0 for its first).
	RejectMailIn func(mailsBefore int, from string) error
	// RejectRcpt, if it returns an error, refuses RCPT TO (451 4.0.0, or the
	// code of an *smtp.SMTPError such as 550 5.1.1).
	RejectRcpt func(to string) error
	// RejectData, if it returns an error, refuses the message after it has
	// been received (554 5.0.0, or the code of an *smtp.SMTPError). The
	// message is then not recorded.
	RejectData func(m *Message) error
	// Delay, if not nil, is asked before each reply to EHLO/HELO ("EHLO"),
	// MAIL ("MAIL"), RCPT ("RCPT") and end of data ("DATA") how long to
	// sleep first. Close cuts the sleeps short.
	Delay func(stage string) time.Duration

	// DiscardBodies keeps no message: only Count and the gauges move. For
	// benchmarks and soak tests.
	DiscardBodies bool
	// Debug, if not nil, receives a copy of the whole SMTP conversation.
	Debug io.Writer
}

// Message is one message accepted by a [GoSMTPServer].
type Message struct {
	// QueueID is the ID in the end-of-data reply "250 2.0.0 OK: queued as ID".
	QueueID string
	// Session numbers the connection that carried the message, from 1.
	Session int64
	// Hostname is the client's EHLO/HELO argument.
	Hostname string
	// TLS reports whether the transaction ran over TLS.
	TLS bool
	// User is the authenticated user, or "" without AUTH.
	User string
	// From is the reverse path of MAIL FROM, without angle brackets.
	From string
	// Opts holds the MAIL FROM parameters (SIZE, BODY, SMTPUTF8, RET,
	// ENVID, AUTH, ...).
	Opts smtp.MailOptions
	// To lists the forward paths of the accepted RCPT TO, in order.
	To []string
	// RcptOpts holds the RCPT TO parameters (NOTIFY, ORCPT, ...), parallel
	// to To.
	RcptOpts []smtp.RcptOptions
	// Data is the message exactly as received, after dot-unstuffing
	// (DATA) or concatenated chunks (BDAT); nil with DiscardBodies.
	Data []byte
	// Size is the length of the message in bytes, also with DiscardBodies.
	Size int64
}

// GoSMTPServer is an in-process go-smtp server started by [GoSMTP].
type GoSMTPServer struct {
	t      testing.TB
	opts   GoSMTPOptions
	srv    *smtp.Server
	ln     *trackingListener
	addr   string
	cert   *Cert
	pipe   *pipeListener // with GoSMTPOptions.Pipe
	served chan struct{}
	// closing is closed when Close starts, to cut Delay sleeps short.
	closing chan struct{}

	count    atomic.Int64
	queueSeq atomic.Int64
	sessSeq  atomic.Int64

	mu      sync.Mutex
	msgs    []Message
	changed chan struct{} // closed and replaced on every delivery

	closeOnce sync.Once
	closeErr  error
}

// GoSMTP starts an in-process github.com/emersion/go-smtp server on a free
// loopback port and stops it (waiting for every connection goroutine) when
// the test ends. It advertises PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES,
// CHUNKING and SIZE, plus STARTTLS, AUTH and the Enable* extensions as
// configured. The end-of-data reply is "250 2.0.0 OK: queued as ID".
func GoSMTP(t testing.TB, opts GoSMTPOptions) *GoSMTPServer {
	t.Helper()
	s := &GoSMTPServer{
		t:       t,
		opts:    opts,
		changed: make(chan struct{}),
		served:  make(chan struct{}),
		closing: make(chan struct{}),
	}

	be := smtp.BackendFunc(s.newSession)
	srv := smtp.NewServer(be)
	srv.Domain = opts.Domain
	if srv.Domain == "" {
		srv.Domain = "localhost"
	}
	srv.AllowInsecureAuth = opts.AllowInsecureAuth
	srv.EnableSMTPUTF8 = opts.EnableSMTPUTF8
	srv.EnableDSN = opts.EnableDSN
	srv.EnableBINARYMIME = opts.EnableBINARYMIME
	srv.EnableREQUIRETLS = opts.EnableREQUIRETLS
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = opts.MaxRecipients
	if opts.MaxLineLength > 0 {
		srv.MaxLineLength = opts.MaxLineLength
	}
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.Debug = opts.Debug
	srv.ErrorLog = &tbLogger{s: s}
	if opts.Mode != Plain {
		s.cert = opts.Cert
		if s.cert == nil {
			s.cert = NewCert(t)
		}
		srv.TLSConfig = s.cert.Server.Clone()
	}
	s.srv = srv

	host := "127.0.0.1:0"
	if opts.IPv6 {
		host = "[::1]:0"
	}
	var raw net.Listener
	if opts.Pipe {
		s.pipe = newPipeListener()
		raw = s.pipe
	} else {
		var err error
		raw, err = net.Listen("tcp", host)
		if err != nil {
			if opts.IPv6 {
				Unavailable(t, "cannot listen on [::1]: %v", err)
			}
			t.Fatalf("testpeers: go-smtp listen: %v", err)
		}
	}
	s.ln = newTrackingListener(raw)
	s.addr = raw.Addr().String()
	var l net.Listener = s.ln
	if opts.Mode == ImplicitTLS {
		l = tls.NewListener(l, srv.TLSConfig)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("testpeers: closing go-smtp server: %v", err)
		}
	})
	go func() {
		defer close(s.served)
		_ = srv.Serve(l)
	}()
	return s
}

// Addr returns the server's "host:port".
func (s *GoSMTPServer) Addr() string { return s.addr }

// Host returns the listening IP, 127.0.0.1 or ::1.
func (s *GoSMTPServer) Host() string { h, _, _ := net.SplitHostPort(s.addr); return h }

// Port returns the listening port.
func (s *GoSMTPServer) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Cert returns the certificate the server presents, or nil in Plain mode.
func (s *GoSMTPServer) Cert() *Cert { return s.cert }

// Server returns the underlying go-smtp server. Change its fields only
// before the first connection.
func (s *GoSMTPServer) Server() *smtp.Server { return s.srv }

// Close stops the server: it closes the listener and every connection and
// waits until all connection goroutines have returned. It is called
// automatically when the test ends; calling it more than once is harmless.
func (s *GoSMTPServer) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		// Shutdown closes the listeners (our trackingListener then closes
		// every connection) and waits for the connection goroutines.
		go func() { done <- s.srv.Shutdown(ctx) }()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				s.closeErr = err
			}
		case <-ctx.Done():
			s.closeErr = errors.New("connections did not end within 10s")
		}
		select {
		case <-s.served:
		case <-time.After(5 * time.Second):
			if s.closeErr == nil {
				s.closeErr = errors.New("go-smtp Serve did not return within 5s")
			}
		}
		s.ln.setClosed()
	})
	return s.closeErr
}

// Count returns how many messages have been accepted so far.
func (s *GoSMTPServer) Count() int64 { return s.count.Load() }

// Messages returns a copy of the accepted messages, oldest first; empty with
// DiscardBodies.
func (s *GoSMTPServer) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Reset forgets the recorded messages and sets Count to 0.
func (s *GoSMTPServer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = nil
	s.count.Store(0)
}

// WaitCount waits until at least n messages have been accepted, and reports
// whether that happened within timeout.
func (s *GoSMTPServer) WaitCount(n int64, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if s.count.Load() >= n {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return s.count.Load() >= n
		}
	}
}

// Sessions returns the number of connections open right now.
func (s *GoSMTPServer) Sessions() int64 { return s.ln.open.Load() }

// MaxSessions returns the highest number of connections that were open at
// the same time.
func (s *GoSMTPServer) MaxSessions() int64 { return s.ln.max.Load() }

// Connections returns how many connections were accepted in total.
func (s *GoSMTPServer) Connections() int64 { return s.ln.total.Load() }

func (s *GoSMTPServer) delay(stage string) {
	if s.opts.Delay == nil {
		return
	}
	if d := s.opts.Delay(stage); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.closing:
		}
	}
}

func (s *GoSMTPServer) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.delay("EHLO")
	if s.opts.RejectSession != nil {
		if err := s.opts.RejectSession(c.Hostname()); err != nil {
			return nil, err
		}
	}
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, id: s.sessSeq.Add(1), hostname: c.Hostname(), tls: isTLS}, nil
}

func (s *GoSMTPServer) record(m *Message) {
	s.mu.Lock()
	if !s.opts.DiscardBodies {
		s.msgs = append(s.msgs, *m)
	}
	s.count.Add(1)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// session is one SMTP session; go-smtp makes a new one after STARTTLS.
type session struct {
	s        *GoSMTPServer
	mails    int // MAIL commands received
	id       int64
	hostname string
	tls      bool
	user     string

	from     string
	mailOpts smtp.MailOptions
	to       []string
	rcptOpts []smtp.RcptOptions
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (ss *session) AuthMechanisms() []string {
	var m []string
	if len(ss.s.opts.Auth) > 0 {
		m = append(m, sasl.Plain, sasl.Login)
	}
	if len(ss.s.opts.Tokens) > 0 {
		m = append(m, XOAuth2, sasl.OAuthBearer)
	}
	return m
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	opts := ss.s.opts
	checkPass := func(user, pass string) error {
		if want, ok := opts.Auth[user]; ok && len(opts.Auth) > 0 && want == pass {
			ss.user = user
			return nil
		}
		return smtp.ErrAuthFailed
	}
	checkToken := func(user, token string) bool {
		want, ok := opts.Tokens[user]
		return ok && want == token
	}
	onOK := func(user string) { ss.user = user }
	switch mech {
	case sasl.Plain:
		if len(opts.Auth) > 0 {
			return sasl.NewPlainServer(func(identity, user, pass string) error {
				if identity != "" && identity != user {
					return smtp.ErrAuthFailed
				}
				return checkPass(user, pass)
			}), nil
		}
	case sasl.Login:
		if len(opts.Auth) > 0 {
			return newLoginServer(checkPass), nil
		}
	case XOAuth2:
		if len(opts.Tokens) > 0 {
			return NewXOAuth2Server(checkToken, onOK), nil
		}
	case sasl.OAuthBearer:
		if len(opts.Tokens) > 0 {
			return NewOAuthBearerServer(checkToken, onOK), nil
		}
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.s.delay("MAIL")
	if ss.s.opts.AuthRequired && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.mails++
	if f := ss.s.opts.RejectMail; f != nil {
		if err := f(from, opts); err != nil {
			return err
		}
	}
	if f := ss.s.opts.RejectMailIn; f != nil {
		if err := f(ss.mails-1, from); err != nil {
			return err
		}
	}
	ss.from = from
	if opts != nil {
		ss.mailOpts = *opts
	} else {
		ss.mailOpts = smtp.MailOptions{}
	}
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	ss.s.delay("RCPT")
	if f := ss.s.opts.RejectRcpt; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	if opts != nil {
		ss.rcptOpts = append(ss.rcptOpts, *opts)
	} else {
		ss.rcptOpts = append(ss.rcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (ss *session) Data(r io.Reader) error {
	m := &Message{
		Session:  ss.id,
		Hostname: ss.hostname,
		TLS:      ss.tls,
		User:     ss.user,
		From:     ss.from,
		Opts:     ss.mailOpts,
		To:       append([]string(nil), ss.to...),
		RcptOpts: append([]smtp.RcptOptions(nil), ss.rcptOpts...),
	}
	var err error
	if ss.s.opts.DiscardBodies {
		m.Size, err = io.Copy(io.Discard, r)
	} else {
		m.Data, err = io.ReadAll(r)
		m.Size = int64(len(m.Data))
	}
	if err != nil {
		// Too large (an *smtp.SMTPError) or the connection broke.
		return err
	}
	ss.s.delay("DATA")
	if f := ss.s.opts.RejectData; f != nil {
		if err := f(m); err != nil {
			return err
		}
	}
	m.QueueID = fmt.Sprintf("GS%08X", ss.s.queueSeq.Add(1))
	ss.s.record(m)
	// go-smtp replies with the code and text of a returned *SMTPError
	// whatever the code, which is the only way to name a queue ID.
	return &smtp.SMTPError{
		Code:         250,
		EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message:      "OK: queued as " + m.QueueID,
	}
}

func (ss *session) Reset() {
	ss.from = ""
	ss.mailOpts = smtp.MailOptions{}
	ss.to, ss.rcptOpts = nil, nil
}

func (ss *session) Logout() error { return nil }

// loginServer is the server side of AUTH LOGIN, which go-sasl lacks.
type loginServer struct {
	check      func(user, pass string) error
	state      int
	user, pass string
}

func newLoginServer(check func(user, pass string) error) sasl.Server {
	return &loginServer{check: check}
}

func (a *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch a.state {
	case 0:
		a.state = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		// An initial response carries the user name (RFC draft, used by
		// some clients).
		a.user = string(response)
		a.state = 2
		return []byte("Password:"), false, nil
	case 1:
		a.user = string(response)
		a.state = 2
		return []byte("Password:"), false, nil
	case 2:
		a.pass = string(response)
		a.state = 3
		return nil, true, a.check(a.user, a.pass)
	}
	return nil, true, sasl.ErrUnexpectedClientResponse
}

// trackingListener counts and remembers its connections so that Close can
// end them all (go-smtp's Shutdown waits for them but does not close them).
type trackingListener struct {
	net.Listener
	open, max, total atomic.Int64

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func newTrackingListener(l net.Listener) *trackingListener {
	return &trackingListener{Listener: l, conns: make(map[*trackedConn]struct{})}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = c.Close()
		return nil, net.ErrClosed
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	l.total.Add(1)
	n := l.open.Add(1)
	for {
		m := l.max.Load()
		if n <= m || l.max.CompareAndSwap(m, n) {
			break
		}
	}
	return tc, nil
}

// Close closes the listener and every connection it accepted.
func (l *trackingListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	return err
}

func (l *trackingListener) setClosed() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.open.Add(-1)
	})
	return err
}

// tbLogger sends go-smtp's error log to t.Logf while the server runs.
type tbLogger struct{ s *GoSMTPServer }

func (l *tbLogger) Printf(format string, v ...any) {
	l.log(fmt.Sprintf(format, v...))
}

func (l *tbLogger) Println(v ...any) {
	l.log(fmt.Sprintln(v...))
}

func (l *tbLogger) log(msg string) {
	select {
	case <-l.s.served:
		// The test may be over; t.Logf would panic.
		return
	default:
	}
	l.s.t.Logf("go-smtp %s: %s", l.s.addr, msg)
}
