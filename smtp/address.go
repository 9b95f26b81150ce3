package smtp

import (
	"strings"
	"unicode/utf8"
)

// Length limits of RFC 5321 §4.5.3.1 on addresses.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxAddress   = 254 // RFC 5321 path limit 256 minus the angle brackets
)

// validateAddress checks a mailbox before it is put on the wire. It
// returns whether the address has non-ASCII characters (which need
// SMTPUTF8) and, for an invalid address, what is wrong with it.
func validateAddress(addr string) (utf8Addr bool, problem string) {
	if addr == "" {
		return false, "empty address"
	}
	if len(addr) > maxAddress {
		return false, "address longer than 254 octets"
	}
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		switch {
		case c == '\r' || c == '\n':
			return false, "address contains CR or LF"
		case c == 0:
			return false, "address contains NUL"
		case c == '<' || c == '>':
			return false, "address contains < or >"
		case c == ' ' || c == '\t':
			return false, "address contains white space"
		case c < 0x20 || c == 0x7f:
			return false, "address contains a control character"
		case c >= 0x80:
			utf8Addr = true
		}
	}
	if utf8Addr && !utf8.ValidString(addr) {
		return false, "address is not valid UTF-8"
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		if strings.EqualFold(addr, "postmaster") {
			return false, ""
		}
		return false, "address has no @"
	}
	local, domain := addr[:at], addr[at+1:]
	switch {
	case local == "":
		return false, "address has an empty local part"
	case domain == "":
		return false, "address has an empty domain"
	case len(local) > maxLocalPart:
		return false, "local part longer than 64 octets"
	case len(domain) > maxDomain:
		return false, "domain longer than 255 octets"
	}
	return utf8Addr, ""
}

// validateHostname checks the name sent with EHLO: a domain or an
// address literal, no white space or control characters.
func validateHostname(name string) string {
	if name == "" {
		return "empty EHLO name"
	}
	if len(name) > maxDomain {
		return "EHLO name longer than 255 octets"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' || c >= 0x80 {
			return "EHLO name contains a space, control or non-ASCII character, or < >"
		}
	}
	return ""
}
