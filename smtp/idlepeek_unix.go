//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package smtp

import "syscall"

// peekSupported reports whether peekSocket can ask the kernel on this
// platform.
const peekSupported = true

// peekSocket asks the kernel, without blocking and without consuming
// anything, whether the peer has sent bytes or closed the connection
// under t. It looks through transports that expose the connection they
// wrap (NetConn, as *tls.Conn and this module's plaintext transport do)
// down to one that is a syscall.Conn, such as *net.TCPConn.
func peekSocket(t any) peekResult {
	sc, ok := innermostConn(t).(syscall.Conn)
	if !ok {
		return peekUnknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekUnknown
	}
	res := peekUnknown
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
			res = peekNothing
		case rerr == nil && n > 0, rerr == nil && n == 0:
			res = peekSomething // bytes, or the peer's FIN
		case rerr == syscall.EINTR:
		default:
			res = peekSomething // reset: reading will say so
		}
		return true // never wait for readability
	})
	if err != nil {
		return peekUnknown
	}
	return res
}
