package testkit

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Gate serves a handler (a WeChat stand-in) but holds every request while
// it is shut, so that a call stays in flight for exactly as long as the test
// needs, without sleeping.
type Gate struct {
	*httptest.Server
	next http.Handler

	mu       sync.Mutex
	open     chan struct{} // closed while the gate is open
	isOpen   bool
	arrivals int
	arrival  chan struct{} // closed, and replaced, at each arrival
}

// NewGate starts a shut gate in front of next; the test's cleanup opens it,
// so that nothing stays held.
func NewGate(t testing.TB, next http.Handler) *Gate {
	t.Helper()
	g := &Gate{next: next, open: make(chan struct{}), arrival: make(chan struct{})}
	g.Server = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(func() {
		g.Open()
		g.Close()
	})
	return g
}

func (g *Gate) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.arrivals++
	close(g.arrival)
	g.arrival = make(chan struct{})
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		g.next.ServeHTTP(w, r)
	case <-r.Context().Done(): // the caller gave up: as if never answered
	}
}

// Open lets every held request through, and every later one at once.
func (g *Gate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.isOpen {
		close(g.open)
		g.isOpen = true
	}
}

// Shut makes the gate hold the requests that arrive from now on.
func (g *Gate) Shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.isOpen {
		g.open = make(chan struct{})
		g.isOpen = false
	}
}

// Arrivals is how many requests have reached the gate so far.
func (g *Gate) Arrivals() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.arrivals
}

// AwaitArrivals waits until n requests have reached the gate, failing the
// test after 10 seconds. Call it from the test's goroutine.
func (g *Gate) AwaitArrivals(t testing.TB, n int) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		arrived, next := g.arrivals, g.arrival
		g.mu.Unlock()
		if arrived >= n {
			return
		}
		select {
		case <-next:
		case <-deadline.C:
			t.Fatalf("gave up waiting for %d requests at the gate; %d arrived", n, arrived)
		}
	}
}
