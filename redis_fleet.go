package wechatlogin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// appRedis is one app's share of a Redis: its key space, the keys that hide
// what it stores, and how many gateways share it. State is shared by the
// handlers of one (app_id, endpoint, app_secret), as in memory: a staging
// site pointing at a simulator never meets the production site's state,
// even in the same Redis under the same key_prefix.
type appRedis struct {
	redis   *redisClient
	poolKey string
	prefix  string // key_prefix and the app's scope
	nameKey []byte // names keys without revealing what they count
	sealer  cipher.AEAD
	size    int
}

// newAppRedis resolves cfg and attaches to the shared client for its settings.
// Release it in Cleanup.
func newAppRedis(ctx caddy.Context, cfg *RedisConfig, appID, endpoint, appSecret string) (*appRedis, error) {
	settings, err := cfg.resolve(caddy.NewReplacer())
	if err != nil {
		return nil, err
	}
	if err := registerStoreMetrics(ctx.GetMetricsRegistry()); err != nil {
		return nil, err
	}
	redisLogs.Do(func() { redis.SetLogger(redisLogger{}) })
	key := settings.poolKey()
	value, _, err := redisClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newRedisClient(settings, ctx.Logger(), redisPoolSize()), nil
	})
	if err != nil {
		return nil, err
	}
	salt := appID + "\x00" + endpoint
	derive := func(purpose string, n int) []byte {
		k, _ := hkdf.Key(sha256.New, []byte(appSecret), []byte(salt), "wechat_login redis "+purpose, n) // n is far below HKDF's limit
		return k
	}
	block, _ := aes.NewCipher(derive("seal", 32)) // a 32-byte key is always valid
	sealer, _ := cipher.NewGCM(block)
	return &appRedis{
		redis:   value.(*redisClient),
		poolKey: key,
		// One hash tag per app: every key of the app is in one Cluster
		// slot, so that a script may touch several (a code's result and
		// its player's budget).
		prefix:  cfg.keyPrefix() + "{" + hex.EncodeToString(derive("scope", 8)) + "}:",
		nameKey: derive("name", 32),
		sealer:  sealer,
		size:    cfg.fleetSize(),
	}, nil
}

// release lets go of the shared client; the last one closes it.
func (a *appRedis) release() error {
	_, err := redisClients.Delete(a.poolKey)
	return err
}

// hide names an id (a player, an address, a code) by a MAC under a key
// derived from the app secret: nothing in Redis can be read back, nor
// tested against a guess, without the secret.
func (a *appRedis) hide(id []byte) string {
	mac := hmac.New(sha256.New, a.nameKey)
	mac.Write(id)
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// sealClockSkew is how long past its expiry a sealed value still opens: the
// gateway that sealed it and the one opening it read different clocks.
const sealClockSkew = 5 * time.Second

// sealFormat is bound into every seal, so that a value sealed in the format
// before expiries were inside (by an older gateway) does not open, rather
// than being read without one.
const sealFormat = "wechat_login seal v2\x00"

var errSealExpired = errors.New("a stored value past its expiry")

// seal encrypts v (AES-GCM under a key derived from the app secret) with
// its absolute expiry inside, bound to the key it is stored under, behind
// a clear kind byte for the scripts. Redis's own expiry on the key can be
// removed or renewed by anyone who can write to Redis; the one inside
// cannot, and open refuses the value once it has passed.
func (a *appRedis) seal(kind byte, name string, v any, expires time.Time) []byte {
	body, _ := json.Marshal(v) // plain strings and numbers always encode
	plain := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(body)), uint64(expires.UnixMilli()))
	plain = append(plain, body...)
	out := make([]byte, 1+a.sealer.NonceSize(), 1+a.sealer.NonceSize()+len(plain)+a.sealer.Overhead())
	out[0] = kind
	nonce := out[1:]
	_, _ = rand.Read(nonce) // crypto/rand never fails
	return a.sealer.Seal(out, nonce, plain, sealedFor(kind, name))
}

// open reads into v a value seal stored under name, unless it does not
// open (tampered with, moved, sealed under another secret or by an older
// gateway) or its expiry is more than sealClockSkew before now.
func (a *appRedis) open(name, stored string, v any, now time.Time) error {
	if len(stored) < 1+a.sealer.NonceSize() {
		return errors.New("a stored value too short to open")
	}
	nonce, sealed := stored[1:1+a.sealer.NonceSize()], stored[1+a.sealer.NonceSize():]
	plain, err := a.sealer.Open(nil, []byte(nonce), []byte(sealed), sealedFor(stored[0], name))
	if err != nil {
		return err
	}
	if len(plain) < 8 {
		return errors.New("a stored value without its expiry")
	}
	if expires := time.UnixMilli(int64(binary.BigEndian.Uint64(plain))); !now.Before(expires.Add(sealClockSkew)) {
		return errSealExpired
	}
	return json.Unmarshal(plain[8:], v)
}

// sealedFor is the data a sealed value is bound to: the format, its kind
// and its key, so that no value can be moved to another key or read as
// another kind.
func sealedFor(kind byte, name string) []byte {
	return append(append([]byte(sealFormat), kind), name...)
}

// newUniqueID names one holder of a lock, so that a holder whose lock ran
// out never lets go of the next holder's, and one entry of a ledger.
func newUniqueID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails
	return hex.EncodeToString(b[:])
}

// scriptTime is the time a script is to use, in milliseconds: clock's, which
// only tests set, or else "", for the Redis server's own (the gateways'
// clocks then do not matter).
func scriptTime(clock func() time.Time) string {
	if clock == nil {
		return ""
	}
	return strconv.FormatInt(clock().UnixMilli(), 10)
}
