package smtp

import (
	"slices"
	"strconv"
	"strings"
)

// Capabilities is what the server advertised in its last EHLO reply.
// After STARTTLS the capabilities from before the upgrade are discarded.
type Capabilities struct {
	// Pipelining is RFC 2920 PIPELINING.
	Pipelining bool
	// Chunking is RFC 3030 CHUNKING (BDAT).
	Chunking bool
	// EightBitMIME is RFC 6152 8BITMIME.
	EightBitMIME bool
	// SMTPUTF8 is RFC 6531 SMTPUTF8.
	SMTPUTF8 bool
	// EnhancedStatusCodes is RFC 2034 ENHANCEDSTATUSCODES.
	EnhancedStatusCodes bool
	// StartTLS is RFC 3207 STARTTLS.
	StartTLS bool
	// DSN is RFC 3461 delivery status notifications.
	DSN bool
	// Size is true when RFC 1870 SIZE was advertised; MaxSize is its
	// limit, 0 meaning no fixed limit.
	Size    bool
	MaxSize int64
	// Auth lists the SASL mechanisms offered, upper-cased, from both the
	// "AUTH" and the obsolete "AUTH=" forms, without duplicates, in the
	// order offered. Every mechanism this package implements is kept;
	// of the others, only the first 16 valid names.
	Auth []string
	// Extensions maps every upper-cased keyword to its parameters, for
	// extensions this type has no field for. Besides the keywords this
	// type has fields for, it keeps the first 64 others, and at most
	// 1024 octets of parameters per keyword (a repeated keyword's
	// parameters are joined by a space). A line whose keyword is not
	// printable ASCII is not an extension (RFC 5321: letters, digits
	// and "-") and is left out.
	Extensions map[string]string
}

// Has reports whether the server advertised the extension keyword
// (case-insensitive).
func (c Capabilities) Has(keyword string) bool {
	_, ok := c.Extensions[upperASCII(keyword)]
	return ok
}

// HasAuth reports whether the server offered the SASL mechanism
// (case-insensitive).
func (c Capabilities) HasAuth(mech string) bool {
	return slices.Contains(c.Auth, strings.ToUpper(mech))
}

// Limits on what parseEHLO keeps, so that the work and memory of an EHLO
// reply stay linear in its size whatever the server advertises (a
// hostile one can send 128 lines of 998 octets, about 31 000 mechanism
// names).
const (
	// maxExtensions is the most keywords kept beyond those this package
	// knows (the fields of [Capabilities] and AUTH), which are always kept.
	maxExtensions = 64
	// maxExtensionParams is the longest parameter text kept for one
	// keyword; the parameters of a repeated keyword are joined up to it.
	maxExtensionParams = 1024
	// maxOtherMechs is the most AUTH mechanism names kept beyond those
	// this package implements, which are always kept.
	maxOtherMechs = 16
)

// knownMechs are the mechanisms [Client.LoginWith] implements.
var knownMechs = [...]string{MechSCRAMSHA256, MechPLAIN, MechLOGIN, MechCRAMMD5, MechXOAUTH2, MechOAUTHBEARER}

// parseEHLO reads the capabilities from an EHLO reply's lines; the first
// line is the server's greeting and names no extension. Its work is
// linear in the size of the lines: every line is looked at once, and
// what is kept is bounded (see maxExtensions).
func parseEHLO(lines []string) Capabilities {
	c := Capabilities{Extensions: make(map[string]string, min(len(lines), 16))}
	others := 0 // unknown keywords kept
	for i, line := range lines {
		if i == 0 {
			continue
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		kw, params, _ := strings.Cut(line, " ")
		// The obsolete form "AUTH=PLAIN LOGIN" (pre-RFC 4954 Outlook).
		if k, p, ok := strings.Cut(kw, "="); ok && strings.EqualFold(k, "AUTH") {
			kw, params = k, strings.TrimSpace(p+" "+params)
		}
		if !printableASCII(kw) {
			// Not a keyword (RFC 5321 §4.1.1.1: letters, digits and
			// "-"): nothing to keep, and nothing unprintable as a key.
			continue
		}
		kw = upperASCII(kw)
		params = strings.TrimSpace(params)
		known := true
		switch kw {
		case "PIPELINING":
			c.Pipelining = true
		case "CHUNKING":
			c.Chunking = true
		case "8BITMIME":
			c.EightBitMIME = true
		case "SMTPUTF8":
			c.SMTPUTF8 = true
		case "ENHANCEDSTATUSCODES":
			c.EnhancedStatusCodes = true
		case "STARTTLS":
			c.StartTLS = true
		case "DSN":
			c.DSN = true
		case "SIZE":
			c.Size = true
			if n, err := strconv.ParseInt(params, 10, 64); err == nil && n > 0 {
				c.MaxSize = n
			}
		case "AUTH":
			// Only this line's names: the names of earlier AUTH lines
			// are already in c.Auth, which is bounded.
			c.Auth = appendMechs(c.Auth, params)
		default:
			known = false
		}
		prev, seen := c.Extensions[kw]
		switch {
		case !seen:
			if !known {
				if others == maxExtensions {
					continue
				}
				others++
			}
			if len(params) > maxExtensionParams {
				params = params[:maxExtensionParams]
			}
			c.Extensions[kw] = params
		case params != "" && len(prev)+1+len(params) <= maxExtensionParams:
			if prev != "" {
				params = prev + " " + params
			}
			c.Extensions[kw] = params
		}
	}
	return c
}

// appendMechs appends to have the mechanism names in params that it does
// not hold yet, upper-cased: every valid name this package implements,
// and up to maxOtherMechs others. have is bounded, so the search in it
// costs a constant per name.
func appendMechs(have []string, params string) []string {
	others := 0
	for _, m := range have {
		if !slices.Contains(knownMechs[:], m) {
			others++
		}
	}
	for params != "" {
		var m string
		m, params, _ = strings.Cut(params, " ")
		if m == "" || len(m) > 20 {
			continue
		}
		m = strings.ToUpper(m)
		if !validMechName(m) || slices.Contains(have, m) {
			continue
		}
		if !slices.Contains(knownMechs[:], m) {
			if others == maxOtherMechs {
				continue
			}
			others++
		}
		have = append(have, m)
	}
	return have
}

// upperASCII upper-cases the ASCII letters of s and leaves every other
// octet as it is. An EHLO keyword is ASCII (RFC 5321 §4.1.1.1);
// strings.ToUpper would turn each invalid octet of a caller's keyword
// into the three octets of U+FFFD.
func upperASCII(s string) string {
	i := 0
	for i < len(s) && (s[i] < 'a' || s[i] > 'z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c >= 'a' && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
	return string(b)
}

// printableASCII reports whether s is made of printable ASCII octets
// (0x21 to 0x7e) only.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
