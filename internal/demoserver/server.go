package demoserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpkit/smtpkit/internal/selfsigned"
)

// The recipient local parts that make the server fail on purpose (see the
// package documentation).
const (
	RejectLocalPart = "reject" // 550 5.1.1 at RCPT TO
	DeferLocalPart  = "defer"  // 451 4.3.0 at RCPT TO
	DropLocalPart   = "drop"   // connection closed after the final dot
)

// Options configures [Start]. The zero value is a server on a free
// 127.0.0.1 port that offers no AUTH and accepts mail from anyone.
type Options struct {
	// Users maps user names to the passwords AUTH PLAIN accepts. When it
	// is not empty, MAIL FROM is refused with 530 5.7.0 until the client
	// has logged in.
	Users map[string]string
	// Tokens maps user names to the OAuth 2.0 access tokens AUTH XOAUTH2
	// accepts; like Users, it makes MAIL FROM wait for a login.
	Tokens map[string]string
	// StartTLS makes the server speak plaintext first and offer STARTTLS
	// (as on port 587), and AUTH only once TLS is up, instead of implicit
	// TLS.
	StartTLS bool
	// Domain is the server's name in its greeting; "localhost" when
	// empty.
	Domain string
	// MaxMessageBytes is the largest message accepted, advertised with
	// SIZE; 0 means 10 MiB.
	MaxMessageBytes int64
	// ErrorLog receives the server's reports of broken connections; nil
	// discards them.
	ErrorLog io.Writer
}

// Message is one message the server accepted (or received and then
// dropped the connection for, with a drop@ recipient).
type Message struct {
	// QueueID is the id in the final reply, "250 2.0.0 OK: queued as ID".
	QueueID string
	// User is the authenticated user, or "" without AUTH.
	User string
	// From is the reverse-path of MAIL FROM, without angle brackets.
	From string
	// To lists the accepted recipients, in order.
	To []string
	// Data is the message as received: CRLF line endings, dot-unstuffed.
	Data []byte
	// Dropped reports that the connection was closed instead of
	// answering the final dot.
	Dropped bool
}

// Server is a running demo server. Its methods are safe for concurrent
// use.
type Server struct {
	srv     *smtp.Server
	ln      *trackingListener
	certPEM []byte
	pool    *x509.CertPool
	users   map[string]string
	tokens  map[string]string
	served  chan struct{} // closed when Serve returns

	mu       sync.Mutex // guards the fields below
	msgs     []Message
	queueSeq int

	closeOnce sync.Once
	closeErr  error
}

// Start starts a server on a free 127.0.0.1 port, with implicit TLS and
// a certificate made on the spot. Stop it with [Server.Close].
func Start(opts Options) (*Server, error) {
	sc, err := selfsigned.New("smtpkit demo server", selfsigned.ECDSA, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("demoserver: certificate: %w", err)
	}
	cert, certPEM, pool := sc.TLS, sc.CertPEM, sc.Pool

	s := &Server{
		certPEM: certPEM,
		pool:    pool,
		users:   make(map[string]string, len(opts.Users)),
		served:  make(chan struct{}),
	}
	for u, p := range opts.Users {
		s.users[u] = p
	}
	s.tokens = maps.Clone(opts.Tokens)

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = opts.Domain
	if srv.Domain == "" {
		srv.Domain = "localhost"
	}
	srv.MaxMessageBytes = opts.MaxMessageBytes
	if srv.MaxMessageBytes <= 0 {
		srv.MaxMessageBytes = 10 << 20
	}
	srv.MaxRecipients = 100
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	logTo := opts.ErrorLog
	if logTo == nil {
		logTo = io.Discard
	}
	srv.ErrorLog = log.New(logTo, "demoserver: ", 0)
	s.srv = srv

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demoserver: listen: %w", err)
	}
	s.ln = &trackingListener{Listener: raw, conns: make(map[net.Conn]struct{})}
	go func() {
		defer close(s.served)
		if opts.StartTLS {
			_ = srv.Serve(s.ln) // go-smtp offers STARTTLS with its TLSConfig
			return
		}
		_ = srv.Serve(tls.NewListener(s.ln, srv.TLSConfig))
	}()
	return s, nil
}

// Addr returns the server's "127.0.0.1:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// CertPEM returns the server's certificate, PEM-encoded: what a client
// must trust (smtpsend's -ca-file).
func (s *Server) CertPEM() []byte { return append([]byte(nil), s.certPEM...) }

// CertPool returns a pool whose only root is the server's certificate.
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// ClientTLSConfig returns a TLS client configuration that trusts the
// server's certificate and nothing else. The certificate names
// localhost, 127.0.0.1 and ::1.
func (s *Server) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS12}
}

// Messages returns a copy of the recorded messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.msgs))
	for i, m := range s.msgs {
		m.To = append([]string(nil), m.To...)
		m.Data = append([]byte(nil), m.Data...)
		out[i] = m
	}
	return out
}

// Close stops the server: it closes the listener and every connection,
// and returns once every goroutine the server started has ended. It is
// idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.ln.Close()
		<-s.served // no connection goroutine can start after this
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("demoserver: shutdown: %w", err)
		}
	})
	return s.closeErr
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, conn: c}, nil
}

func (s *Server) record(m Message) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queueSeq++
	m.QueueID = fmt.Sprintf("DEMO%04d", s.queueSeq)
	s.msgs = append(s.msgs, m)
	return m.QueueID
}

// session is one SMTP session. go-smtp calls its methods from the
// connection's goroutine (Data from a helper goroutine with BDAT, while
// the connection goroutine waits), never concurrently.
type session struct {
	s    *Server
	conn *smtp.Conn

	user string
	from string
	to   []string
	drop bool
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (ss *session) AuthMechanisms() []string {
	var mechs []string
	if len(ss.s.users) > 0 {
		mechs = append(mechs, sasl.Plain)
	}
	if len(ss.s.tokens) > 0 {
		mechs = append(mechs, "XOAUTH2")
	}
	return mechs
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if mech == "XOAUTH2" && len(ss.s.tokens) > 0 {
		return &xoauth2Server{check: func(user, token string) error {
			if want, ok := ss.s.tokens[user]; !ok || want != token {
				return smtp.ErrAuthFailed
			}
			ss.user = user
			return nil
		}}, nil
	}
	if mech != sasl.Plain || len(ss.s.users) == 0 {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		want, ok := ss.s.users[user]
		if !ok || want != pass || (identity != "" && identity != user) {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if (len(ss.s.users) > 0 || len(ss.s.tokens) > 0) && ss.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	local := to
	if i := strings.LastIndexByte(to, '@'); i >= 0 {
		local = to[:i]
	}
	switch strings.ToLower(local) {
	case RejectLocalPart:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Mailbox unavailable (demo: reject@ is always refused)"}
	case DeferLocalPart:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try again later (demo: defer@ is always deferred)"}
	case DropLocalPart:
		ss.drop = true
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Message{User: ss.user, From: ss.from, To: append([]string(nil), ss.to...), Data: data, Dropped: ss.drop}
	id := ss.s.record(m)
	if ss.drop {
		// The message is in; the client will never hear so. Closing the
		// socket makes the reply go nowhere and ends the session.
		ss.conn.Conn().Close()
		return errors.New("demo: connection dropped after the final dot")
	}
	// go-smtp sends a returned *SMTPError's code and text whatever the
	// code: the only way to name the queue id in the reply.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}

func (ss *session) Reset() {
	ss.from, ss.to, ss.drop = "", nil, false
}

func (ss *session) Logout() error { return nil }

// xoauth2Server is the server side of XOAUTH2: one response,
// "user=USER^Aauth=Bearer TOKEN^A^A".
type xoauth2Server struct {
	check func(user, token string) error
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil {
		return []byte{}, false, nil // no initial response: ask for it
	}
	var user, token string
	for _, f := range strings.Split(string(resp), "\x01") {
		if v, ok := strings.CutPrefix(f, "user="); ok {
			user = v
		} else if v, ok := strings.CutPrefix(f, "auth=Bearer "); ok {
			token = v
		}
	}
	return nil, true, x.check(user, token)
}

// trackingListener remembers the connections it accepted so Close can
// close them all, including one accepted while Close runs.
type trackingListener struct {
	net.Listener

	mu     sync.Mutex // guards the fields below
	conns  map[net.Conn]struct{}
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

func (l *trackingListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for c := range l.conns {
		c.(*trackedConn).Conn.Close()
	}
	clear(l.conns)
	return err
}

type trackedConn struct {
	net.Conn
	l *trackingListener
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
