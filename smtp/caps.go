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
	// "AUTH" and the obsolete "AUTH=" forms, without duplicates.
	Auth []string
	// Extensions maps every upper-cased keyword to its parameters, for
	// extensions this type has no field for.
	Extensions map[string]string
}

// Has reports whether the server advertised the extension keyword
// (case-insensitive).
func (c *Capabilities) Has(keyword string) bool {
	_, ok := c.Extensions[strings.ToUpper(keyword)]
	return ok
}

// HasAuth reports whether the server offered the SASL mechanism
// (case-insensitive).
func (c *Capabilities) HasAuth(mech string) bool {
	return slices.Contains(c.Auth, strings.ToUpper(mech))
}

// parseEHLO reads the capabilities from an EHLO reply's lines; the first
// line is the server's greeting and names no extension.
func parseEHLO(lines []string) Capabilities {
	c := Capabilities{Extensions: make(map[string]string, len(lines))}
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
		kw = strings.ToUpper(kw)
		params = strings.TrimSpace(params)
		if prev, ok := c.Extensions[kw]; ok && prev != "" {
			params = prev + " " + params
		}
		c.Extensions[kw] = params
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
			for _, m := range strings.Fields(params) {
				m = strings.ToUpper(m)
				if !slices.Contains(c.Auth, m) {
					c.Auth = append(c.Auth, m)
				}
			}
		}
	}
	return c
}
