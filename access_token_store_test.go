package wechatlogin

import (
	"context"
	"testing"
	"time"
)

func TestForcedRefreshLedger(t *testing.T) {
	var l forcedRefreshLedger
	assertForcedRefreshRule(t, l.spend)
}

// TestMemoryTokenStoreFetchesOnlyForTheStaleToken: a caller whose token was
// replaced meanwhile gets the replacement without a fetch.
func TestMemoryTokenStoreFetchesOnlyForTheStaleToken(t *testing.T) {
	s := newMemoryTokenStore()
	fetches := 0
	fetch := func(value string) func(context.Context) (accessToken, error) {
		return func(context.Context) (accessToken, error) {
			fetches++
			return accessToken{value: value, expires: accessTokenEpoch.Add(2 * time.Hour)}, nil
		}
	}
	ctx := context.Background()
	a, _ := s.refresh(ctx, accessTokenEpoch, accessToken{}, fetch("a"))
	if got, _ := s.refresh(ctx, accessTokenEpoch, accessToken{}, fetch("x")); got != a || fetches != 1 {
		t.Fatalf("a caller with no token got %q after %d fetches; want the stored one, 1 fetch", got.value, fetches)
	}
	b, _ := s.refresh(ctx, accessTokenEpoch, a, fetch("b"))
	if b.value != "b" || fetches != 2 {
		t.Fatalf("a caller with the stored token got %q after %d fetches; want a fetch", b.value, fetches)
	}
	if got, _ := s.refresh(ctx, accessTokenEpoch, a, fetch("x")); got != b || fetches != 2 {
		t.Errorf("a late caller with the old token got %q after %d fetches; want the replacement, no fetch", got.value, fetches)
	}
	if got, _ := s.refresh(ctx, b.usableUntil(), a, fetch("c")); got.value != "c" || fetches != 3 {
		t.Errorf("with the stored token no longer usable, got %q after %d fetches; want a fetch", got.value, fetches)
	}
}
