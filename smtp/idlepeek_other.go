//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package smtp

const peekSupported = false

// peekSocket cannot ask the kernel on this platform.
func peekSocket(any) peekResult { return peekUnknown }
