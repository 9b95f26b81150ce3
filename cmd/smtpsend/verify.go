package main

import (
	"context"

	"github.com/smtpkit/smtpkit/sender"
)

// runVerify is smtpsend -verify: it checks the setup as a service would
// at startup (connect, TLS, EHLO, AUTH, QUIT), sends nothing, prints the
// exchange and the result, and returns 0 or the error's exit status.
func runVerify(ctx context.Context, o *options, cfg sender.Config, con *console) int {
	con.Outf("--- SMTP exchange (from the sender's audit events) ---\n")
	p := &exchangePrinter{c: con, connect: map[sender.Security]string{
		sender.ImplicitTLS:       "TCP to " + o.server + ", TLS from the first byte",
		sender.StartTLS:          "TCP to " + o.server + ", plaintext until STARTTLS",
		sender.InsecurePlaintext: "TCP to " + o.server + ", PLAINTEXT, never encrypted",
	}[cfg.Security]}
	cfg.Options.Audit = p.event
	snd, err := newSender(cfg)
	if err == nil {
		defer snd.Close()
		vctx, cancel := context.WithTimeout(ctx, o.timeout)
		err = snd.Verify(vctx)
		cancel()
	}
	con.Outf("\n--- verify ---\n")
	if err == nil {
		con.Outf("status:    verified: the server can be reached, TLS and the login work; nothing was sent\n")
		return exitOK
	}
	st := classify(err)
	con.Outf("status:    %s (exit %d)\n", st, st.exitCode())
	con.Outf("failed at: %s\n", step(err))
	if rt := replyText(err); rt != "" {
		con.Outf("reply:     %s\n", rt)
	}
	(&job{o: o, con: con}).explain(result{src: source{name: o.server}, err: err, status: st})
	return st.exitCode()
}
