package testpeers

import (
	"bytes"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// XOAuth2 is the name of Google's XOAUTH2 SASL mechanism.
const XOAuth2 = "XOAUTH2"

// OAuthError is the JSON challenge that [GoSMTP] sends when an XOAUTH2 or
// OAUTHBEARER token is rejected, as Gmail does. The client must answer it with
// an empty response (or, for OAUTHBEARER, "\x01"), after which the server
// replies 535 5.7.8.
const OAuthError = `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`

// TokenChecker validates a bearer token for a user.
type TokenChecker func(user, token string) bool

// bearerServer is the server side of XOAUTH2 and OAUTHBEARER. go-sasl's own
// OAUTHBEARER server answers a failed token with 454 and indexes an empty
// final response out of range, so both are implemented here.
type bearerServer struct {
	mech  string
	check TokenChecker
	onOK  func(user string)
	state int // 0: want initial response, 1: sent error challenge, 2: done
}

var errBadBearerResponse = &smtp.SMTPError{
	Code:         501,
	EnhancedCode: smtp.EnhancedCode{5, 5, 2},
	Message:      "Malformed authentication response",
}

// NewXOAuth2Server returns a sasl.Server for XOAUTH2: the client's response is
// "user=USER\x01auth=Bearer TOKEN\x01\x01". A rejected token gets the
// [OAuthError] challenge, then 535 5.7.8. onOK, if not nil, is called with
// the user on success.
func NewXOAuth2Server(check TokenChecker, onOK func(user string)) sasl.Server {
	return &bearerServer{mech: XOAuth2, check: check, onOK: onOK}
}

// NewOAuthBearerServer returns a sasl.Server for OAUTHBEARER (RFC 7628): the
// client's response is "n,a=USER,\x01host=...\x01port=...\x01auth=Bearer
// TOKEN\x01\x01". A rejected token gets the [OAuthError] challenge; after the
// client's "\x01" (or empty) response the server replies 535 5.7.8.
func NewOAuthBearerServer(check TokenChecker, onOK func(user string)) sasl.Server {
	return &bearerServer{mech: sasl.OAuthBearer, check: check, onOK: onOK}
}

func (s *bearerServer) Next(response []byte) ([]byte, bool, error) {
	switch s.state {
	case 0:
		if response == nil {
			// No initial response: ask for it with an empty challenge.
			return []byte{}, false, nil
		}
		s.state = 1
		user, token, err := s.parse(response)
		if err != nil {
			return nil, true, err
		}
		if s.check(user, token) {
			s.state = 2
			if s.onOK != nil {
				s.onOK(user)
			}
			return nil, true, nil
		}
		return []byte(OAuthError), false, nil
	case 1:
		s.state = 2
		if len(response) > 1 || (len(response) == 1 && response[0] != 0x01) {
			return nil, true, errBadBearerResponse
		}
		return nil, true, smtp.ErrAuthFailed
	}
	return nil, true, sasl.ErrUnexpectedClientResponse
}

// parse extracts user and token from an initial response.
func (s *bearerServer) parse(resp []byte) (user, token string, err error) {
	var kvs [][]byte
	if s.mech == XOAuth2 {
		kvs = bytes.Split(resp, []byte{0x01})
	} else {
		// gs2-header "n,a=user," then \x01-separated key=value pairs.
		parts := bytes.SplitN(resp, []byte{','}, 3)
		if len(parts) != 3 || !bytes.Equal(parts[0], []byte("n")) {
			return "", "", errBadBearerResponse
		}
		if a := parts[1]; len(a) > 0 {
			if !bytes.HasPrefix(a, []byte("a=")) {
				return "", "", errBadBearerResponse
			}
			user = string(a[2:])
		}
		kvs = bytes.Split(parts[2], []byte{0x01})
	}
	for _, kv := range kvs {
		if len(kv) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			return "", "", errBadBearerResponse
		}
		switch k {
		case "user":
			user = v
		case "auth":
			scheme, tok, ok := strings.Cut(v, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", errBadBearerResponse
			}
			token = tok
		}
	}
	if token == "" {
		return "", "", errBadBearerResponse
	}
	return user, token, nil
}
