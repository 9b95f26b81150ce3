package testpeers

import (
	"errors"
	"io"
	"os"
	"testing"
	"testing/synctest"
	"time"
)

// TestBufferedPipeBuffersLikeASocket: a writer's octets wait in the
// buffer without a reader, up to its size; beyond it the write waits for
// the reader; deadlines follow the bubble's clock; after Close the peer
// reads what was buffered, then EOF, and its writes fail.
func TestBufferedPipeBuffersLikeASocket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := BufferedPipe(8)
		if n, err := c.Write([]byte("12345678")); n != 8 || err != nil {
			t.Fatalf("a write that fits: %d, %v", n, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := c.Write([]byte("9A"))
			done <- err
		}()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("a write past the buffer returned without a reader: %v", err)
		default:
		}
		buf := make([]byte, 4)
		if n, err := s.Read(buf); n != 4 || err != nil || string(buf) != "1234" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		if err := <-done; err != nil {
			t.Fatalf("the write once room was made: %v", err)
		}
		rest, _ := io.ReadAll(io.LimitReader(s, 6))
		if string(rest) != "5678"+"9A" {
			t.Fatalf("read %q", rest)
		}

		start := time.Now()
		s.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) != time.Second {
			t.Fatalf("a read past its deadline: %v after %v", err, time.Since(start))
		}
		s.SetReadDeadline(time.Time{})

		c.Write([]byte("xy"))
		c.Close()
		if b, err := io.ReadAll(s); string(b) != "xy" || err != nil {
			t.Fatalf("after the peer's Close: %q, %v", b, err)
		}
		if _, err := s.Write([]byte("z")); err == nil {
			t.Fatal("a write to a closed peer succeeded")
		}
		s.Close()
	})
}
