// Command logindriver logs in a range of distinct players through the
// gateway, one login each, over a fixed number of keep-alive connections.
// bench/run.sh uses it to bring an exact number of players to Caddy before
// measuring its memory, which wrk (bounded by time, not count) cannot do.
//
// Usage:
//
//	logindriver -url http://127.0.0.1:18183/wx/login -prefix m -from 0 -to 100000 [-conns 32]
//
// It prints one line, "DRIVER logins=N ok=N failed=N seconds=S rate=R",
// and the first few failures, without their codes.
//
// With -rate, it is a launch spike instead (bench/spike.sh): codes
// <prefix><i> for i in [from, to), login i sent at i/rate seconds from the
// start whatever the answers before it (an open loop, as players arrive),
// to the gateways of -url (comma-separated) in turn, and every -double'th
// code to two of them at once (a double tap, a retry on another node). It
// prints "SPIKE codes=N logins=N failed_once=N failed_twice=N p50_ms=X
// p99_ms=X seconds=S".
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	loginURL := flag.String("url", "", "the gateway's login `URL`")
	prefix := flag.String("prefix", "m", "player name prefix; player i logs in with the code <prefix><i>")
	from := flag.Int64("from", 0, "first player index")
	to := flag.Int64("to", 0, "player index to stop before")
	conns := flag.Int("conns", 32, "concurrent keep-alive connections")
	rate := flag.Float64("rate", 0, "spike: codes per second, sent on schedule (0: the closed loop above)")
	double := flag.Int64("double", 10, "spike: every double'th code goes to two gateways at once")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("logindriver: ")
	if _, err := url.ParseRequestURI(*loginURL); err != nil || *to < *from || *conns < 1 {
		flag.Usage()
		os.Exit(2)
	}

	if *rate > 0 {
		spike(strings.Split(*loginURL, ","), *prefix, *from, *to, *rate, *double)
		return
	}
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns},
		Timeout:   30 * time.Second,
	}
	var (
		next       = *from
		ok, failed atomic.Int64
		reported   atomic.Int64
		wg         sync.WaitGroup
	)
	start := time.Now()
	for range *conns {
		wg.Go(func() {
			for {
				i := atomic.AddInt64(&next, 1) - 1
				if i >= *to {
					return
				}
				status, err := login(client, *loginURL+"?code="+*prefix+strconv.FormatInt(i, 10))
				if err == nil && status/100 == 2 {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				if reported.Add(1) <= 5 {
					log.Printf("player #%d: status %d, error %v", i, status, err)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	n := *to - *from
	fmt.Printf("DRIVER logins=%d ok=%d failed=%d seconds=%.1f rate=%.0f\n",
		n, ok.Load(), failed.Load(), elapsed, float64(n)/elapsed)
}

// spike sends codes from..to at rate per second over urls, each to one
// gateway but every double'th to two at once, and reports failures and
// latencies.
func spike(urls []string, prefix string, from, to int64, rate float64, double int64) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000}, Timeout: 30 * time.Second}
	var (
		mu                      sync.Mutex
		latencies               []time.Duration
		failedOnce, failedTwice atomic.Int64
		logins                  atomic.Int64
		wg                      sync.WaitGroup
	)
	send := func(u string, twice bool) {
		logins.Add(1)
		start := time.Now()
		status, err := login(client, u)
		took := time.Since(start)
		mu.Lock()
		latencies = append(latencies, took)
		mu.Unlock()
		if err == nil && status/100 == 2 {
			return
		}
		if twice {
			failedTwice.Add(1)
		} else {
			failedOnce.Add(1)
		}
		if failedOnce.Load()+failedTwice.Load() <= 5 {
			log.Printf("a login sent to %s: status %d, error %v", map[bool]string{true: "two gateways", false: "one gateway"}[twice], status, err)
		}
	}
	start := time.Now()
	for i := from; i < to; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(float64(i-from) / rate * float64(time.Second)))))
		code := "?code=" + prefix + strconv.FormatInt(i, 10)
		first := urls[i%int64(len(urls))]
		if double > 0 && i%double == 0 {
			second := urls[(i+1)%int64(len(urls))]
			wg.Add(2)
			go func() { defer wg.Done(); send(first+code, true) }()
			go func() { defer wg.Done(); send(second+code, true) }()
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); send(first+code, false) }()
	}
	sent := time.Since(start).Seconds()
	wg.Wait()
	slices.Sort(latencies)
	quantile := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	fmt.Printf("SPIKE codes=%d logins=%d failed_once=%d failed_twice=%d p50_ms=%.0f p99_ms=%.0f seconds=%.2f\n",
		to-from, logins.Load(), failedOnce.Load(), failedTwice.Load(), quantile(0.5), quantile(0.99), sent)
}

// login sends one login and drains the answer so the connection is reused.
func login(client *http.Client, u string) (int, error) {
	resp, err := client.Get(u)
	if urlErr, ok := err.(*url.Error); ok {
		return 0, urlErr.Err // its message would repeat the URL, code included
	}
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}
