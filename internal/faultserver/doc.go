// Package faultserver is a scriptable line-protocol server for transcript
// tests and fault injection in this module's tests.
//
// It exists for the faults no real peer can be made to produce on demand: a
// 421 at an exact step, a connection dropped mid-reply, bytes injected after
// a STARTTLS 220 (response injection, the client-side twin of the command
// injection of CVE-2011-0411), a server that stalls, garbage and overlong
// lines. Behaviour a real server has is tested
// against real servers instead (see DESIGN.md); this package is not a mock
// of any of them.
//
// A test writes a script, a list of [Step] values, and starts a [Server] that
// runs it against one accepted connection ([Start]) or runs successive
// scripts against successive connections ([StartMulti]):
//
//	srv := faultserver.Start(t,
//		faultserver.Reply("220 mx.example ESMTP\r\n"),
//		faultserver.ExpectLine("EHLO client.example"),
//		faultserver.Reply(faultserver.Lines("250-mx.example", "250 PIPELINING")),
//		faultserver.ExpectLine("QUIT"),
//		faultserver.Reply("221 bye\r\n"),
//	)
//	// ... drive a client against srv.Addr() ...
//	<-srv.Done()
//	if err := srv.Err(); err != nil {
//		t.Fatal(err)
//	}
//
// Every byte the client sends is recorded, before and after a [StartTLS] step
// (after it, the decrypted stream), and is available from
// [Server.Received]. The first step that fails, by a mismatch or an I/O
// error, is reported by [Server.Err] as a [*StepError], and its connection is
// closed. When a script runs out of steps the connection is not closed: the
// server keeps reading and recording until the client closes it, so a
// client's final QUIT appears in Received; a final [Close] step hangs up
// instead.
//
// The server listens on 127.0.0.1 only. It is test support code: it is an
// ordinary package, so that other packages' tests can import it, but it is
// internal and not part of the module's API.
package faultserver
