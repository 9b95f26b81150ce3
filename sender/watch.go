package sender

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/smtpkit/smtpkit/transport"
)

// holdFor is how long a session goroutine may keep finished requests'
// answers back once it has gone on to I/O with them: answers are sent
// together, which costs the scheduler one wake-up for the lot, but never
// later than this.
const holdFor = time.Millisecond

// watched is a connection's transport as the session sees it: every read
// and write tells the conn that the session goroutine may be about to
// wait on the network. It passes NetConn through,
// so the smtp core can still ask the socket whether an idle server has
// closed it.
type watched struct {
	transport.Transport
	a *conn
}

func (w *watched) Read(p []byte) (int, error) {
	w.a.waiting()
	return w.Transport.Read(p)
}

func (w *watched) Write(p []byte) (int, error) {
	w.a.waiting()
	return w.Transport.Write(p)
}

// RemoteAddr and LocalAddr pass the transport's addresses on (the smtp
// core names the server by RemoteAddr for STARTTLS without a server name,
// and for OAUTHBEARER); nil if it has none.
func (w *watched) RemoteAddr() net.Addr {
	if t, ok := w.Transport.(interface{ RemoteAddr() net.Addr }); ok {
		return t.RemoteAddr()
	}
	return nil
}

func (w *watched) LocalAddr() net.Addr {
	if t, ok := w.Transport.(interface{ LocalAddr() net.Addr }); ok {
		return t.LocalAddr()
	}
	return nil
}

// NetConn returns the connection under the transport, if it has one.
func (w *watched) NetConn() net.Conn {
	switch t := w.Transport.(type) {
	case interface{ NetConn() net.Conn }:
		return t.NetConn()
	case net.Conn:
		return t
	}
	return nil
}

// watchedTLS is a watched TLS transport: the smtp core recognises TLS
// by its ConnectionState method.
type watchedTLS struct {
	watched
	cs interface{ ConnectionState() tls.ConnectionState }
}

func (w *watchedTLS) ConnectionState() tls.ConnectionState { return w.cs.ConnectionState() }

// watchedUpgradable is a watched plaintext transport that STARTTLS
// upgrades: the TLS transport it returns is watched too.
type watchedUpgradable struct {
	watched
	st transport.StartTLSCapable
}

func (w *watchedUpgradable) UpgradeTLS(ctx context.Context, cfg *tls.Config) (transport.Transport, error) {
	t, err := w.st.UpgradeTLS(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return w.a.watch(t), nil
}

// watch wraps t for conn a, keeping what the smtp core looks for in a
// transport: ConnectionState (TLS), UpgradeTLS (STARTTLS) and NetConn.
func (a *conn) watch(t transport.Transport) transport.Transport {
	w := watched{Transport: t, a: a}
	if cs, ok := t.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return &watchedTLS{watched: w, cs: cs}
	}
	if st, ok := t.(transport.StartTLSCapable); ok {
		return &watchedUpgradable{watched: w, st: st}
	}
	return &w
}

// waiting is called on the session goroutine before each read and write
// of its connection, in the middle of an smtp.Client call. Transactions
// at the head of the window that have finished (a WriteTx that waits for
// one transaction's 354 reads the reply of the one before) are answered
// from their results; the answers held back are sent holdFor after the
// session first went on to I/O with them, if it has not sent them by
// then.
func (a *conn) waiting() {
	for len(a.inflight) > 0 && a.inflight[0].tx.Done() {
		req := a.inflight[0]
		a.inflight[0] = nil
		a.inflight = a.inflight[1:]
		out, err := req.tx.Result()
		was := a.holding
		a.holding = true
		a.settle(req, out, err)
		a.holding = was
	}
	a.ansMu.Lock()
	defer a.ansMu.Unlock()
	if a.timing || len(a.answers) == 0 {
		return
	}
	if a.holdTimer == nil {
		a.holdTimer = time.AfterFunc(holdFor, a.deliver)
	} else {
		a.holdTimer.Reset(holdFor)
	}
	a.timing = true
}

// deliver sends the answers held back. The session goroutine calls it
// when it is done reading replies or about to wait for work; the hold
// timer calls it holdFor after the session went on to I/O with answers
// held. (A timer left armed after the session delivered finds nothing.)
func (a *conn) deliver() {
	a.ansMu.Lock()
	defer a.ansMu.Unlock()
	a.timing = false
	for i, ans := range a.answers {
		ans.req.result <- ans.res // buffered (1), answered once: never blocks
		a.answers[i] = answer{}
	}
	a.answers = a.answers[:0]
}
