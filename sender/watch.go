package sender

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/smtpkit/smtpkit/transport"
)

// Answers are sent in batches, which costs the scheduler one wake-up for
// the lot, but a caller never waits long for an answer already known: if
// one read or write of the session's connection lasts batchFor, a timer
// sends the batch; and before any I/O, a batch older than batchMax is
// sent.
const (
	batchFor = time.Millisecond
	batchMax = 5 * time.Millisecond
)

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
	n, err := w.Transport.Read(p)
	w.a.resumed()
	return n, err
}

func (w *watched) Write(p []byte) (int, error) {
	w.a.waiting()
	n, err := w.Transport.Write(p)
	w.a.resumed()
	return n, err
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
	return w.a.wrap(t), nil
}

// wrap wraps t for conn a, keeping what the smtp core looks for in a
// transport: ConnectionState (TLS), UpgradeTLS (STARTTLS), NetConn and
// RemoteAddr (above). The core finds these by interface, so one it comes
// to look for must be passed on here too; each has a sender test that
// fails if it is hidden (TestFaultTLS, TestPostfixSharedSessions,
// TestServerIdleTimeout, TestFaultStartTLSCustomDialUsesPeerAddress).
func (a *conn) wrap(t transport.Transport) transport.Transport {
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
// from their results. A batch older than batchMax is sent now; a younger
// one by batchTimer if the I/O lasts batchFor.
func (a *conn) waiting() {
	for len(a.inflight) > 0 && a.inflight[0].tx.Done() {
		at := a.popOldest()
		out, err := at.tx.Result()
		was := a.batching
		a.batching = true
		a.settle(at, out, err)
		a.batching = was
	}
	a.batchMu.Lock()
	n := len(a.batch)
	old := n > 0 && time.Since(a.batchSince) >= batchMax
	a.batchMu.Unlock()
	switch {
	case n == 0:
	case old:
		a.deliver()
	default:
		if a.batchTimer == nil {
			a.batchTimer = time.AfterFunc(batchFor, a.deliver)
		} else {
			a.batchTimer.Reset(batchFor)
		}
		a.timing = true
	}
}

// resumed is called on the session goroutine after each read and write.
func (a *conn) resumed() {
	if a.timing {
		a.batchTimer.Stop()
		a.timing = false
	}
}

// deliver sends the batch of answers. The session goroutine calls it
// when it is done reading replies, has looked for more work, or has kept
// the batch for batchMax; batchTimer calls it when an I/O lasts batchFor.
func (a *conn) deliver() {
	a.batchMu.Lock()
	defer a.batchMu.Unlock()
	for i, ans := range a.batch {
		ans.at.result <- ans.res // buffered (1), answered once: never blocks
		a.batch[i] = answer{}
	}
	a.batch = a.batch[:0]
}
