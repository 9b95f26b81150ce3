package sender_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpkit/smtpkit/internal/testpeers"
	"github.com/smtpkit/smtpkit/transport"
)

// fakeMTA is a small SMTP server for the misbehaviours no real peer can
// be made to produce on demand: a 421 followed by more replies, a 503
// until RSET, a refusal and then a 421. It speaks over any net.Conn, so
// it runs on loopback or on net.Pipe inside a testing/synctest bubble.
// Deliveries are counted by the Message-ID idBody puts in each message.
type fakeMTA struct {
	chunking bool
	// mail decides the reply to the n-th MAIL of all connections (from
	// 1) and the i-th of its connection (from 1); "" means 250. A reply
	// starting with 421 closes the connection after closing says.
	mail func(n, i int) string
	// rcpt decides the reply to the i-th RCPT of a connection (from 1);
	// "" means 250.
	rcpt func(i int) string
	// final decides the reply to the end of the n-th message's data
	// (from 1); "" means 250 with a queue id.
	final func(n int) string
	// after421 is what the server does after a 421 until it closes:
	// answer every command with it ("503 5.5.1 ..."), until the client
	// has sent nothing for quiet; "" closes at once.
	after421 string
	quiet    time.Duration
	// strictRSET answers MAIL with 503 after a refused end of data
	// until RSET comes, as Mailpit does while it shuts down.
	strictRSET bool
	// silent answers nothing after EHLO, and reads everything.
	silent bool
	// finalPrefix, when set, is sent before each accepting final reply
	// (continuation lines, "250-..."), to make long replies.
	finalPrefix string
	// fault, when set, is asked about the n-th command of all
	// connections (from 1), once it is read: "drop" closes the
	// connection at once (the replies not yet sent are lost), "stall"
	// makes it read on and answer nothing more, a duration ("300ms")
	// waits that long before answering; "" carries on.
	fault func(n int) string

	mu         sync.Mutex // guards the fields below
	commands   int
	mails      int
	messages   int
	delivered  map[string]int
	conns      int
	mailsOn    []int // MAIL commands each connection received
	commandsOn []int
	// trace, when not nil, gathers every command and reply, each
	// prefixed with its connection's number.
	trace *[]string
}

func newFakeMTA() *fakeMTA {
	return &fakeMTA{delivered: map[string]int{}, quiet: 50 * time.Millisecond}
}

// dial returns a Config.Dial that serves each connection over net.Pipe.
func (m *fakeMTA) dialPipe() func(context.Context) (transport.Transport, error) {
	return func(context.Context) (transport.Transport, error) {
		c, s := net.Pipe()
		go m.serve(s)
		return c, nil
	}
}

// dialBuffered returns a Config.Dial that serves each connection over a
// testpeers.BufferedPipe of size octets each way: in a synctest bubble,
// a connection on which the sender's reader writes, as on TCP.
func (m *fakeMTA) dialBuffered(size int) func(context.Context) (transport.Transport, error) {
	return func(context.Context) (transport.Transport, error) {
		c, s := testpeers.BufferedPipe(size)
		go m.serve(s)
		return c, nil
	}
}

// listen serves loopback connections until the returned stop is called.
func (m *fakeMTA) listen() (addr string, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { m.serve(c) })
		}
	})
	return ln.Addr().String(), func() { ln.Close(); wg.Wait() }
}

// record adds a line to the trace, if one is kept.
func (m *fakeMTA) record(conn int, who, line string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.trace != nil {
		*m.trace = append(*m.trace, fmt.Sprintf("%d %s: %q", conn, who, line))
	}
}

func (m *fakeMTA) stats() (conns int, delivered map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := map[string]int{}
	for k, v := range m.delivered {
		d[k] = v
	}
	return m.conns, d
}

func (m *fakeMTA) serve(c net.Conn) {
	defer c.Close()
	m.mu.Lock()
	m.conns++
	conn := m.conns - 1
	m.mailsOn = append(m.mailsOn, 0)
	m.commandsOn = append(m.commandsOn, 0)
	m.mu.Unlock()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	send := func(s string) bool {
		m.record(conn, "S", s)
		w.WriteString(s)
		// Flush only when nothing more has arrived: a pipelining
		// client gets its replies together, as from a real server.
		if r.Buffered() == 0 {
			return w.Flush() == nil
		}
		return true
	}
	if !send("220 fake.example ESMTP\r\n") {
		return
	}
	stalled := false
	var (
		mailOK, rcptOK, anyRcpt bool
		needRSET                bool
		body                    strings.Builder
		closing                 bool
		mailsHere, rcptsHere    int
	)
	for {
		if closing {
			c.SetReadDeadline(time.Now().Add(m.quiet))
		}
		line, err := r.ReadString('\n')
		if err != nil {
			w.Flush()
			return
		}
		line = strings.TrimRight(line, "\r\n")
		m.record(conn, "C", line)
		m.mu.Lock()
		m.commandsOn[conn]++
		m.mu.Unlock()
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		var chunk []byte
		if verb == "BDAT" {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[1])
			chunk = make([]byte, n)
			if _, err := io.ReadFull(r, chunk); err != nil {
				return
			}
		}
		if m.fault != nil && !stalled {
			m.mu.Lock()
			m.commands++
			n := m.commands
			m.mu.Unlock()
			switch f := m.fault(n); f {
			case "":
			case "drop":
				return
			case "stall":
				stalled = true
			default:
				d, err := time.ParseDuration(f)
				if err != nil {
					panic("fakeMTA: fault " + f)
				}
				w.Flush()
				time.Sleep(d)
			}
		}
		if stalled {
			continue
		}
		if verb == "BDAT" {
			f := strings.Fields(line)
			if !closing && !m.silent {
				body.Write(chunk)
				if len(f) < 3 {
					if !send("250 2.0.0 chunk ok\r\n") {
						return
					}
					continue
				}
			}
		}
		if m.silent && verb != "EHLO" {
			if verb == "MAIL" {
				m.mu.Lock()
				m.mailsOn[conn]++
				m.mu.Unlock()
			}
			continue
		}
		if closing {
			// DATA gets no 354: nothing of a body follows.
			if !send(m.after421 + "\r\n") {
				return
			}
			continue
		}
		var reply string
		switch verb {
		case "EHLO":
			reply = "250-fake.example\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
			if m.chunking {
				reply += "250-CHUNKING\r\n"
			}
			reply += "250 8BITMIME\r\n"
		case "RSET":
			mailOK, rcptOK, anyRcpt, needRSET = false, false, false, false
			body.Reset()
			reply = "250 2.0.0 Ok\r\n"
		case "NOOP":
			reply = "250 2.0.0 Ok\r\n"
		case "QUIT":
			send("221 2.0.0 Bye\r\n")
			w.Flush()
			return
		case "MAIL":
			m.mu.Lock()
			m.mails++
			n := m.mails
			m.mailsOn[conn]++
			m.mu.Unlock()
			mailsHere++
			rcptOK, anyRcpt = false, false
			body.Reset()
			said := "" // asked once: the func may count its calls
			if m.mail != nil {
				said = m.mail(n, mailsHere)
			}
			switch {
			case needRSET && m.strictRSET:
				reply = "503 5.5.1 Bad sequence of commands (RSET/HELO/EHLO required before MAIL)\r\n"
			case said != "":
				reply = said + "\r\n"
			default:
				reply = "250 2.1.0 Ok\r\n"
				mailOK = true
			}
		case "RCPT":
			rcptsHere++
			said := ""
			if m.rcpt != nil && mailOK {
				said = m.rcpt(rcptsHere)
			}
			switch {
			case !mailOK:
				reply = "503 5.5.1 need MAIL\r\n"
			case said != "":
				reply = said + "\r\n"
			default:
				reply = "250 2.1.5 Ok\r\n"
				rcptOK, anyRcpt = true, true
			}
		case "DATA":
			if !mailOK || !anyRcpt {
				reply = "554 5.5.1 no valid recipients\r\n"
				break
			}
			if !send("354 go ahead\r\n") || w.Flush() != nil {
				return
			}
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				body.WriteString(strings.TrimPrefix(l, "."))
			}
			reply = m.endOfData(conn, body.String(), &needRSET)
			mailOK = false
		case "BDAT":
			if !mailOK || !rcptOK {
				reply = "503 5.5.1 need MAIL and RCPT\r\n"
				break
			}
			reply = m.endOfData(conn, body.String(), &needRSET)
			mailOK = false
		default:
			reply = "502 5.5.2 unknown command\r\n"
		}
		if !send(reply) {
			return
		}
		if strings.HasPrefix(reply, "421") {
			if m.after421 == "" {
				w.Flush()
				return
			}
			closing = true
		}
	}
}

// endOfData delivers or refuses a message and returns the reply.
func (m *fakeMTA) endOfData(conn int, body string, needRSET *bool) string {
	id := "?"
	if i := strings.Index(body, "Message-ID: <"); i >= 0 {
		id = body[i+len("Message-ID: <"):]
		id = id[:strings.IndexAny(id, "@>")]
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.messages++
	if m.final != nil {
		if r := m.final(m.messages); r != "" {
			*needRSET = true
			if m.trace != nil {
				*m.trace = append(*m.trace, fmt.Sprintf("%d refused %s", conn, id))
			}
			return r + "\r\n"
		}
	}
	if m.trace != nil {
		*m.trace = append(*m.trace, fmt.Sprintf("%d delivered %s", conn, id))
	}
	m.delivered[id]++
	return m.finalPrefix + fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", m.messages)
}
