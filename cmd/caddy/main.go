// Command caddy is Caddy with its standard modules and wechat_login, for
// running and testing this repository without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
)

func main() {
	caddycmd.Main()
}
