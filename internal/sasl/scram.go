package sasl

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/smtpkit/smtpkit/internal/servertext"
)

const scramName = "SCRAM-SHA-256"

const (
	// minIterations is the smallest PBKDF2 iteration count accepted from a
	// server. RFC 7677, section 4, says the count SHOULD be at least 4096;
	// a smaller one makes a captured exchange cheap to brute-force and is
	// either a misconfiguration or an attempt to weaken the client.
	minIterations = 4096
	// maxIterations is the largest PBKDF2 iteration count accepted from a
	// server. It bounds the CPU time a hostile server can make the client
	// spend (the derivation is sequential). 600000 is OWASP's current
	// recommendation for PBKDF2-HMAC-SHA256, so no sensibly configured
	// server asks for more.
	maxIterations = 600000
	// maxServerMessage bounds the size of a SCRAM server message. Real ones
	// are well under 200 bytes; the bound keeps a hostile server from
	// inflating the client-final message or the parser's work.
	maxServerMessage = 4096
	// clientNonceBytes is the number of random bytes in the client nonce,
	// which is sent base64-encoded (32 printable characters, none of them
	// a comma).
	clientNonceBytes = 24
)

// gs2Header is the GS2 header this client sends: no channel binding ("n"),
// because the client does not support it, and no authorization identity.
// Its base64 form, "biws", is the c= attribute of the client-final message.
const gs2Header = "n,,"

// scram states.
const (
	scramNew       = iota // Start not yet called
	scramSentFirst        // waiting for the server-first message
	scramSentFinal        // waiting for the server-final message
	scramVerified         // the server's signature checked out
	scramFailed           // an error ended the exchange
)

// scramMech is the SCRAM-SHA-256 mechanism of RFC 5802 and RFC 7677.
type scramMech struct {
	user     string
	pass     string // cleared once the keys are derived
	newNonce func() (string, error)
	state    int

	clientNonce     string
	clientFirstBare string
	serverSignature []byte // expected v= value, known after the server-first message
	// red knows the password and the client proof once they are used, so
	// that a server error (e=) that echoes them does not carry them.
	red servertext.Redactor
}

// ScramSHA256 returns a SCRAM-SHA-256 mechanism (RFC 5802, RFC 7677) for
// user and pass.
//
// The server never sees the password and proves in its final message that
// it knows the user's stored key; [Mechanism.Complete] fails until that
// proof has been verified. Channel binding is not supported (the GS2 header
// is "n,,"). The client nonce comes from crypto/rand.
//
// Both strings must be valid UTF-8 without ASCII control characters, which
// SASLprep (RFC 4013) prohibits. SASLprep is otherwise not applied: ASCII
// passes through unchanged, as SASLprep would leave it, but non-ASCII text is
// sent as the UTF-8 it is given, without SASLprep's mapping and NFKC
// normalisation (the standard library has no stringprep tables). A password
// that SASLprep would change, such as one in a decomposed Unicode form or
// with a non-ASCII space, will therefore not match a server that normalised
// it. In the user name, "=" and "," are escaped as "=3D" and "=2C".
func ScramSHA256(user, pass string) (Mechanism, error) {
	m, err := newScramSHA256(user, pass, randomNonce)
	if err != nil {
		// Return a nil interface, not a nil *scramMech inside one.
		return nil, err
	}
	return m, nil
}

// newScramSHA256 is ScramSHA256 with the nonce source as a parameter, so
// that tests can fix the nonce.
func newScramSHA256(user, pass string, newNonce func() (string, error)) (*scramMech, error) {
	if err := checkField(scramName, "username", user, true, noCtl|utf8Only); err != nil {
		return nil, err
	}
	if err := checkField(scramName, "password", pass, true, noCtl|utf8Only); err != nil {
		return nil, err
	}
	return &scramMech{user: user, pass: pass, newNonce: newNonce}, nil
}

// randomNonce returns clientNonceBytes random bytes in base64.
func randomNonce() (string, error) {
	b := make([]byte, clientNonceBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// Name returns "SCRAM-SHA-256".
func (m *scramMech) Name() string { return scramName }

// Start returns the client-first message, "n,,n=USER,r=NONCE".
func (m *scramMech) Start() ([]byte, bool, error) {
	if m.state != scramNew {
		return nil, false, misusef(scramName, "Start called twice")
	}
	nonce, err := m.newNonce()
	if err != nil {
		m.state = scramFailed
		return nil, false, &mechError{mech: scramName, msg: "generating the client nonce: " + err.Error()}
	}
	if nonce == "" || !isPrintable(nonce) {
		m.state = scramFailed
		return nil, false, misusef(scramName, "client nonce is not a non-empty printable string without commas")
	}
	m.clientNonce = nonce
	m.clientFirstBare = "n=" + escapeSASLName(m.user) + ",r=" + nonce
	m.state = scramSentFirst
	return []byte(gs2Header + m.clientFirstBare), true, nil
}

// Next answers the server-first message with the client-final message, and
// verifies the server-final message (when it arrives as a challenge) and
// answers it with an empty response.
func (m *scramMech) Next(challenge []byte) ([]byte, error) {
	switch m.state {
	case scramNew:
		return nil, misusef(scramName, "Next called before Start")
	case scramSentFirst:
		resp, err := m.clientFinal(challenge)
		if err != nil {
			m.state = scramFailed
			return nil, err
		}
		m.state = scramSentFinal
		return resp, nil
	case scramSentFinal:
		if err := m.verifyServerFinal(challenge); err != nil {
			var se *SCRAMError
			if errors.As(err, &se) {
				se.Value = m.red.CleanString(se.Value)
			}
			m.state = scramFailed
			return nil, err
		}
		m.state = scramVerified
		return []byte{}, nil
	case scramVerified:
		return nil, protocolf(scramName, "unexpected server challenge after the server-final message")
	default:
		return nil, misusef(scramName, "Next called after the exchange failed")
	}
}

// clientFinal parses the server-first message, derives the keys and returns
// the client-final message. It remembers the expected server signature.
func (m *scramMech) clientFinal(serverFirst []byte) ([]byte, error) {
	nonce, salt, iter, err := parseServerFirst(serverFirst, m.clientNonce)
	if err != nil {
		return nil, err
	}
	m.red.AddSecret([]byte(m.pass))
	salted, err := pbkdf2.Key(sha256.New, m.pass, salt, iter, sha256.Size)
	m.pass = ""
	if err != nil {
		// The error names a parameter, never the password.
		return nil, &mechError{mech: scramName, msg: "deriving the salted password: " + err.Error()}
	}
	defer clear(salted)

	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2Header)) + ",r=" + nonce
	authMessage := []byte(m.clientFirstBare + "," + string(serverFirst) + "," + withoutProof)

	clientKey := hmacSHA256(salted, []byte("Client Key"))
	defer clear(clientKey)
	storedKey := sha256.Sum256(clientKey)
	defer clear(storedKey[:])
	clientSignature := hmacSHA256(storedKey[:], authMessage)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ clientSignature[i]
	}
	serverKey := hmacSHA256(salted, []byte("Server Key"))
	defer clear(serverKey)
	m.serverSignature = hmacSHA256(serverKey, authMessage)

	resp := make([]byte, 0, len(withoutProof)+3+base64.StdEncoding.EncodedLen(len(proof)))
	resp = append(resp, withoutProof...)
	resp = append(resp, ",p="...)
	resp = base64.StdEncoding.AppendEncode(resp, proof)
	m.red.AddSecret(resp[len(withoutProof)+3:])
	return resp, nil
}

// verifyServerFinal checks the server's signature in constant time.
func (m *scramMech) verifyServerFinal(serverFinal []byte) error {
	sig, err := parseServerFinal(serverFinal)
	if err != nil {
		return err
	}
	if !hmac.Equal(sig, m.serverSignature) {
		return &mechError{mech: scramName, msg: "server signature does not match", kind: ErrServerVerification}
	}
	return nil
}

// Complete fails unless the server's signature has been verified.
func (m *scramMech) Complete() error {
	switch m.state {
	case scramVerified:
		return nil
	case scramNew:
		return misusef(scramName, "Complete called before Start")
	case scramSentFirst:
		return protocolf(scramName, "server reported success before sending the server-first message")
	case scramSentFinal:
		return &mechError{
			mech: scramName,
			msg:  "server reported success without sending its signature; the server is not authenticated",
			kind: ErrServerVerification,
		}
	default:
		return misusef(scramName, "Complete called after the exchange failed")
	}
}

// String describes the mechanism without its password.
func (m *scramMech) String() string { return "sasl.SCRAM-SHA-256(user=" + display(m.user) + ")" }

// GoString describes the mechanism without its password or keys.
func (m *scramMech) GoString() string {
	return fmt.Sprintf("&sasl.scramMech{user:%q, pass:<redacted>, state:%d}", m.user, m.state)
}

// Format prints the mechanism with String or GoString for every verb.
func (m *scramMech) Format(f fmt.State, verb rune) { formatMechanism(f, verb, m) }

// SCRAMError is the error a SCRAM server reports in the e= attribute of its
// server-final message (RFC 5802, section 7), for example "invalid-proof"
// when the password is wrong or "unknown-user". The password and the
// client proof, and any fragment of them, are replaced in it by
// "[redacted]", and characters that are not printable are escaped.
type SCRAMError struct {
	// Value is the server-error-value as the server sent it.
	Value string
}

// Error returns the server's error value, quoted.
func (e *SCRAMError) Error() string {
	return "sasl: " + scramName + ": server error " + strconv.Quote(e.Value)
}

func hmacSHA256(key, msg []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write(msg)
	return mac.Sum(nil)
}

// isPrintable reports whether s consists of the characters RFC 5802 allows
// in a nonce: printable ASCII except ",".
func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

// decodeBase64 decodes standard padded base64, refusing the line breaks
// that encoding/base64 would otherwise skip.
func decodeBase64(s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=') {
			return nil, false
		}
	}
	b, err := base64.StdEncoding.DecodeString(s)
	return b, err == nil
}

// scramAttr splits "k=value" into k and value. It reports false if a is
// not an attribute: a single ASCII letter followed by "=".
func scramAttr(a string) (byte, string, bool) {
	if len(a) < 2 || a[1] != '=' {
		return 0, "", false
	}
	k := a[0]
	if !('a' <= k && k <= 'z' || 'A' <= k && k <= 'Z') {
		return 0, "", false
	}
	return k, a[2:], true
}

// checkExtensions validates the optional extensions after the mandatory
// attributes of a server message. RFC 5802 says unknown extensions are
// ignored, except the reserved "m", which must make authentication fail.
// Anything else that makes the message ambiguous is refused: an attribute
// that SCRAM itself defines (a second r=, s=, i=, v= or e=, or one of the
// client's attributes), and an extension that appears twice.
func checkExtensions(what string, attrs []string) error {
	var seen [128]bool
	for _, a := range attrs {
		k, v, ok := scramAttr(a)
		switch {
		case !ok:
			return protocolf(scramName, "%s message has a malformed attribute", what)
		case k == 'm':
			return protocolf(scramName, "%s message has the unsupported mandatory extension m=", what)
		case strings.IndexByte(scramDefined, k) >= 0:
			return protocolf(scramName, "%s message repeats or misplaces the attribute %c=", what, k)
		case seen[k]:
			return protocolf(scramName, "%s message has the extension %c= twice", what, k)
		case v == "":
			return protocolf(scramName, "%s message has an extension with an empty value", what)
		}
		seen[k] = true
	}
	return nil
}

// scramDefined lists the attribute names RFC 5802 defines (section 5.1);
// none of them is an extension.
const scramDefined = "acenprsvi"

// parseServerFirst parses a SCRAM server-first message (RFC 5802, section
// 7): "r=NONCE,s=SALT,i=COUNT", optionally followed by extensions. The
// nonce must be the client nonce followed by at least one more printable
// character, the salt non-empty base64, and the count within
// [minIterations, maxIterations]. Errors wrap ErrProtocol.
func parseServerFirst(msg []byte, clientNonce string) (nonce string, salt []byte, iter int, err error) {
	const what = "server-first"
	switch {
	case len(msg) == 0:
		return "", nil, 0, protocolf(scramName, "server-first message is empty")
	case len(msg) > maxServerMessage:
		return "", nil, 0, protocolf(scramName, "server-first message is longer than %d bytes", maxServerMessage)
	}
	s := string(msg)
	if strings.IndexByte(s, 0) >= 0 {
		return "", nil, 0, protocolf(scramName, "server-first message contains NUL")
	}
	attrs := strings.Split(s, ",")
	if strings.HasPrefix(attrs[0], "m=") {
		return "", nil, 0, protocolf(scramName, "server-first message has the unsupported mandatory extension m=")
	}
	var rv, sv, iv string
	for i, want := range [...]byte{'r', 's', 'i'} {
		if i >= len(attrs) {
			return "", nil, 0, protocolf(scramName, "server-first message is missing the %c= attribute", want)
		}
		k, v, ok := scramAttr(attrs[i])
		if !ok || k != want {
			return "", nil, 0, protocolf(scramName, "server-first message is missing the %c= attribute", want)
		}
		switch want {
		case 'r':
			rv = v
		case 's':
			sv = v
		case 'i':
			iv = v
		}
	}
	if err := checkExtensions(what, attrs[3:]); err != nil {
		return "", nil, 0, err
	}

	switch {
	case rv == "":
		return "", nil, 0, protocolf(scramName, "server nonce is empty")
	case !isPrintable(rv):
		return "", nil, 0, protocolf(scramName, "server nonce contains a character that is not printable ASCII")
	case len(rv) <= len(clientNonce) || !strings.HasPrefix(rv, clientNonce):
		return "", nil, 0, protocolf(scramName, "server nonce does not extend the client nonce")
	}

	salt, ok := decodeBase64(sv)
	switch {
	case !ok:
		return "", nil, 0, protocolf(scramName, "salt is not valid base64")
	case len(salt) == 0:
		return "", nil, 0, protocolf(scramName, "salt is empty")
	}

	iter, err = parseIterations(iv)
	if err != nil {
		return "", nil, 0, err
	}
	return rv, salt, iter, nil
}

// parseIterations parses a posint (a decimal number without sign or
// leading zeros) and checks it against the iteration bounds.
func parseIterations(v string) (int, error) {
	if v == "" {
		return 0, protocolf(scramName, "iteration count is empty")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, protocolf(scramName, "iteration count is not a decimal number")
		}
	}
	if v[0] == '0' {
		return 0, protocolf(scramName, "iteration count has a leading zero")
	}
	// More digits than maxIterations has cannot be within bounds; checking
	// the length first also keeps Atoi from overflowing.
	if len(v) > len(strconv.Itoa(maxIterations)) {
		return 0, protocolf(scramName, "iteration count exceeds the maximum of %d", maxIterations)
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, protocolf(scramName, "iteration count is not a decimal number")
	case n < minIterations:
		return 0, protocolf(scramName, "iteration count %d is below the minimum of %d", n, minIterations)
	case n > maxIterations:
		return 0, protocolf(scramName, "iteration count %d exceeds the maximum of %d", n, maxIterations)
	}
	return n, nil
}

// parseServerFinal parses a SCRAM server-final message (RFC 5802, section
// 7): "v=SIGNATURE" or "e=ERROR", optionally followed by extensions. It
// returns the decoded, non-empty server signature. An e= message yields a
// *SCRAMError; other errors wrap ErrProtocol.
func parseServerFinal(msg []byte) (verifier []byte, err error) {
	const what = "server-final"
	switch {
	case len(msg) == 0:
		return nil, protocolf(scramName, "server-final message is empty")
	case len(msg) > maxServerMessage:
		return nil, protocolf(scramName, "server-final message is longer than %d bytes", maxServerMessage)
	}
	s := string(msg)
	if strings.IndexByte(s, 0) >= 0 {
		return nil, protocolf(scramName, "server-final message contains NUL")
	}
	attrs := strings.Split(s, ",")
	k, v, ok := scramAttr(attrs[0])
	switch {
	case ok && k == 'e':
		// The server's verdict stands even if extensions follow.
		return nil, &SCRAMError{Value: v}
	case !ok || k != 'v':
		return nil, protocolf(scramName, "server-final message has neither v= nor e=")
	}
	if err := checkExtensions(what, attrs[1:]); err != nil {
		return nil, err
	}
	sig, ok := decodeBase64(v)
	switch {
	case !ok:
		return nil, protocolf(scramName, "server signature is not valid base64")
	case len(sig) == 0:
		return nil, protocolf(scramName, "server signature is empty")
	}
	return sig, nil
}
