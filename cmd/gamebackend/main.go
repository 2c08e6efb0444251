// Command gamebackend is a sample game server that knows nothing about
// WeChat: it answers every request with the identity headers the gateway
// gave it, as JSON. The demo and the benchmarks put it behind Caddy.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "address to serve on")
	flag.Parse()

	srv := &http.Server{Addr: *listen, Handler: http.HandlerFunc(echoIdentity), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("gamebackend: serving on http://%s", *listen)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

// echoIdentity shows what the backend received: the identity headers and
// the size of the body (which the gateway must forward byte for byte).
func echoIdentity(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"path":       r.URL.Path,
		"openid":     r.Header.Get("X-WX-OPENID"),
		"unionid":    r.Header.Get("X-WX-UNIONID"),
		"appid":      r.Header.Get("X-WX-APPID"),
		"body_bytes": n,
	})
}
