package testkit

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Gate serves a handler (a WeChat stand-in) but holds every request until
// the test opens it, so that a call stays in flight for exactly as long as
// the test needs, without sleeping.
type Gate struct {
	*httptest.Server
	next http.Handler
	open chan struct{}
	once sync.Once

	mu       sync.Mutex
	arrivals int
	arrival  chan struct{} // closed, and replaced, at each arrival
}

// NewGate starts a closed gate in front of next; the test's cleanup opens
// it, so that nothing stays held.
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
	g.mu.Unlock()
	select {
	case <-g.open:
		g.next.ServeHTTP(w, r)
	case <-r.Context().Done(): // the caller gave up: as if never answered
	}
}

// Open lets every held request through, and every later one at once.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

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
