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
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"strconv"
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
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("logindriver: ")
	if _, err := url.ParseRequestURI(*loginURL); err != nil || *to < *from || *conns < 1 {
		flag.Usage()
		os.Exit(2)
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
