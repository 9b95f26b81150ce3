package sasl

import (
	"errors"
	"strings"
	"testing"
)

func FuzzParseServerFirst(f *testing.F) {
	f.Add([]byte(rfc7677ServerFirst), rfc7677ClientNonce)
	f.Add([]byte(rfc7677ServerFirst+",x=ext"), rfc7677ClientNonce)
	f.Add([]byte("r=abcdef,s=c2FsdA==,i=600000"), "abc")
	f.Add([]byte("r=abc,s=c2FsdA==,i=4096"), "abc")
	f.Add([]byte("m=x,r=abcd,s=c2FsdA==,i=4096"), "abc")
	f.Add([]byte("r=abcd,s=,i=4096"), "abc")
	f.Add([]byte("r=abcd,s=c2FsdA==,i=04096"), "abc")
	f.Add([]byte("r=abcd,s=c2FsdA==,i=99999999999999999999"), "abc")
	f.Add([]byte("r=abcd,s=c2Fs\r\ndA==,i=4096"), "abc")
	f.Add([]byte(""), "")
	f.Fuzz(func(t *testing.T, msg []byte, clientNonce string) {
		nonce, salt, iter, err := parseServerFirst(msg, clientNonce)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			if nonce != "" || salt != nil || iter != 0 {
				t.Fatalf("error %v with results %q, %x, %d", err, nonce, salt, iter)
			}
			return
		}
		if !strings.HasPrefix(nonce, clientNonce) || len(nonce) <= len(clientNonce) {
			t.Fatalf("nonce %q does not extend the client nonce %q", nonce, clientNonce)
		}
		if !isPrintable(nonce) {
			t.Fatalf("nonce %q has a forbidden character", nonce)
		}
		if iter < minIterations || iter > maxIterations {
			t.Fatalf("iteration count %d out of bounds", iter)
		}
		if len(salt) == 0 {
			t.Fatal("empty salt accepted")
		}
		if len(msg) > maxServerMessage {
			t.Fatalf("a %d-byte message was accepted", len(msg))
		}
	})
}

func FuzzParseServerFinal(f *testing.F) {
	f.Add([]byte(rfc7677ServerFinal))
	f.Add([]byte(rfc7677ServerFinal + ",x=ext"))
	f.Add([]byte(rfc7677ServerFinal + ",m=ext"))
	f.Add([]byte("e=invalid-proof"))
	f.Add([]byte("e="))
	f.Add([]byte("v="))
	f.Add([]byte("v=!!"))
	f.Add([]byte("v=AA\r\n=="))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, msg []byte) {
		sig, err := parseServerFinal(msg)
		if err != nil {
			var se *SCRAMError
			if !errors.As(err, &se) && !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is neither a *SCRAMError nor wraps ErrProtocol", err)
			}
			if sig != nil {
				t.Fatalf("error %v with a signature", err)
			}
			return
		}
		if len(sig) == 0 {
			t.Fatal("empty signature accepted")
		}
		if !strings.HasPrefix(string(msg), "v=") {
			t.Fatalf("accepted %q, which does not start with v=", msg)
		}
	})
}
