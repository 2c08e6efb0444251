// Command gamebackend is a sample game server that knows nothing about
// WeChat: it answers every request with the identity headers the gateway
// gave it, as JSON. The benchmarks put it behind Caddy; `go run ./cmd/demo`
// runs the same handler in-process.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/gamebackend"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "address to serve on")
	flag.Parse()

	srv := &http.Server{Addr: *listen, Handler: gamebackend.Handler(), ReadHeaderTimeout: 10 * time.Second}
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
