package transporttest_test

import (
	"net"
	"testing"

	"github.com/smtpkit/smtpkit/transport"
	"github.com/smtpkit/smtpkit/transport/transporttest"
)

// pipePair is a MakePair for a transport over an in-memory pipe: tr is
// one end of net.Pipe, peer the other.
func pipePair(t *testing.T) (transport.Transport, net.Conn) {
	tr, peer := net.Pipe()
	return tr, peer
}

// A package that implements a transport (over a host's socket, a tunnel,
// a pipe) checks it against the contract the smtp package relies on by
// calling Run from one of its tests, with a MakePair that makes a new
// connected pair for each check:
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, pipePair)
//	}
//
// Run then runs each check as a subtest of TestConformance.
func ExampleRun() {
	var mk transporttest.MakePair = pipePair
	_ = mk
}

// TestRunPassesNetPipe: the transport of ExampleRun keeps the contract,
// as Run checks it.
func TestRunPassesNetPipe(t *testing.T) {
	transporttest.Run(t, pipePair)
}
