package testkit

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// ReceivedRequest is what a Backend saw of one request.
type ReceivedRequest struct {
	Path, RawQuery string
	Header         http.Header
	Trailer        http.Header // complete once the body has been read
	Body           []byte
	ContentLength  int64
}

// Backend is a game server that remembers every request it receives, so
// tests can check what the gateway forwarded, and whether it forwarded
// anything at all.
type Backend struct {
	*httptest.Server
	mu       sync.Mutex
	received []ReceivedRequest
}

// NewBackend starts a backend answering with respond, or 200 "ok" if nil.
func NewBackend(t testing.TB, respond http.HandlerFunc) *Backend {
	t.Helper()
	if respond == nil {
		respond = func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }
	}
	b := new(Backend)
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.received = append(b.received, ReceivedRequest{
			Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Trailer: r.Trailer.Clone(),
			Body: body, ContentLength: r.ContentLength,
		})
		b.mu.Unlock()
		respond(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

// Count is how many requests the backend has received.
func (b *Backend) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.received)
}

// Last is the latest request received; the test fails if there is none.
func (b *Backend) Last(t testing.TB) ReceivedRequest {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.received) == 0 {
		t.Fatal("the backend received no request")
	}
	return b.received[len(b.received)-1]
}

// HeaderValues is the value of header name in each request received so far,
// in order ("" where a request had none).
func (b *Backend) HeaderValues(name string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	values := make([]string, len(b.received))
	for i, r := range b.received {
		values[i] = r.Header.Get(name)
	}
	return values
}

// Reset forgets the requests received so far.
func (b *Backend) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received = nil
}
