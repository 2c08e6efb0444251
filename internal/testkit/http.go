package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Response is a finished response with its body read. Body shadows the
// embedded, already drained http.Response.Body.
type Response struct {
	*http.Response
	Body []byte
}

func (r Response) String() string { return fmt.Sprintf("%d %s", r.StatusCode, r.Body) }

// Leaks returns the forbidden strings in r's header or body.
func (r Response) Leaks() []string {
	var text strings.Builder
	r.Header.Write(&text)
	text.Write(r.Body)
	return Leaks(text.String())
}

// client talks to the test Caddy without keep-alive, so that no request
// lands on a connection still served by a previous config, and without
// following redirects, so that tests see them.
var client = &http.Client{
	Timeout:       30 * time.Second,
	Transport:     &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// Do sends req and reads the whole response.
func Do(req *http.Request) (Response, error) { return send(client, req) }

// send sends req with c and reads the whole response.
func send(c *http.Client, req *http.Request) (Response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return Response{resp, body}, err
}

// Fetch makes a request to path on the test Caddy. Headers are
// "Name: value" strings sent with the name spelled exactly as given (so
// that tests can send odd spellings); a name may repeat. It does not touch
// a testing.T, so any goroutine may call it.
func Fetch(ctx context.Context, method, path string, body io.Reader, headers ...string) (Response, error) {
	req, err := newRequest(ctx, method, BaseURL()+path, body, headers)
	if err != nil {
		return Response{}, err
	}
	return Do(req)
}

// newRequest is a request with headers as Fetch takes them.
func newRequest(ctx context.Context, method, url string, body io.Reader, headers []string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ": ")
		if !ok {
			return nil, fmt.Errorf("header %q is not \"Name: value\"", h)
		}
		req.Header[name] = append(req.Header[name], value) // no canonicalization
	}
	return req, nil
}

// adminDo sends a request to path on the Caddy admin API listening on the
// unix socket at socket; headers are as Fetch's.
func adminDo(socket, method, path string, body io.Reader, headers []string) (Response, error) {
	// The host is never looked up; Caddy wants a loopback one.
	req, err := newRequest(context.Background(), method, "http://127.0.0.1"+path, body, headers)
	if err != nil {
		return Response{}, err
	}
	admin := &http.Client{
		Timeout: client.Timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		},
	}
	return send(admin, req)
}

// Send is Fetch for the test goroutine: a failed request ends the test.
func Send(t testing.TB, method, path string, body io.Reader, headers ...string) Response {
	t.Helper()
	resp, err := Fetch(context.Background(), method, path, body, headers...)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// Get sends a GET for path; see Send.
func Get(t testing.TB, path string, headers ...string) Response {
	t.Helper()
	return Send(t, http.MethodGet, path, nil, headers...)
}

// CheckRefusal checks that r is the documented JSON refusal with status and
// error code, a message, a body that ends at its closing brace, Retry-After
// in whole seconds (at least 1) on 429 and 503, and nothing secret, and
// returns what is wrong with it, if anything. It does not touch a testing.T, so any goroutine may call it.
func CheckRefusal(r Response, status int, code string) error {
	if r.StatusCode != status {
		return fmt.Errorf("got %v, want %d %s", r, status, code)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("%v: Content-Type %q, want application/json", r, ct)
	}
	if !bytes.HasSuffix(r.Body, []byte("}")) {
		return fmt.Errorf("body %q does not end at its closing brace", r.Body)
	}
	var body struct{ Error, Message string }
	if err := json.Unmarshal(r.Body, &body); err != nil || body.Error != code || body.Message == "" {
		return fmt.Errorf("body %s, want error %q with a message", r.Body, code)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 {
			return fmt.Errorf("%v: Retry-After %q, want whole seconds, at least 1", r, r.Header.Get("Retry-After"))
		}
	}
	if leaks := r.Leaks(); len(leaks) > 0 {
		return fmt.Errorf("%d status refusal carries %d secret(s), code(s) or session_key(s)", r.StatusCode, len(leaks))
	}
	return nil
}

// Parallel runs do(0) … do(n-1) on workers goroutines.
func Parallel(n, workers int, do func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				do(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
