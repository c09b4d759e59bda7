package bridge

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// Auth checks that a webhook comes from VerifEye. The zero value rejects every
// request; build one with APIKeyAuth, APIKeyHashAuth, TokenAuth or NoAuth. It is
// safe for concurrent use.
type Auth struct {
	mode string
	want [][sha256.Size]byte // SHA-256 sums of the accepted secrets
}

// Auth modes, as WEBHOOK_AUTH names them.
const (
	AuthAPIKey = "api-key"
	AuthToken  = "token"
	AuthNone   = "none"
)

// APIKeyAuth accepts requests whose X-API-Key header equals key.
func APIKeyAuth(key string) Auth {
	return Auth{mode: AuthAPIKey, want: [][sha256.Size]byte{sha256.Sum256([]byte(key))}}
}

// APIKeyHashAuth accepts requests whose X-API-Key hashes (SHA-256) to one of
// hexSums, comma-separated, so an ingest-only replica need not hold the key
// itself, and a key can be rotated without a window of 401s (list the old and
// the new key's sums until VerifEye sends the new one).
func APIKeyHashAuth(hexSums string) (Auth, error) {
	a := Auth{mode: AuthAPIKey}
	for _, h := range strings.Split(hexSums, ",") {
		b, err := hex.DecodeString(strings.TrimSpace(h))
		if err != nil || len(b) != sha256.Size {
			return Auth{}, fmt.Errorf("bridge: api key hash must be 64 hex characters (a SHA-256 sum), comma-separated for several")
		}
		a.want = append(a.want, [sha256.Size]byte(b))
	}
	return a, nil
}

// TokenAuth accepts requests carrying token as ?token= or Authorization: Bearer.
func TokenAuth(token string) Auth {
	return Auth{mode: AuthToken, want: [][sha256.Size]byte{sha256.Sum256([]byte(token))}}
}

// NoAuth accepts every request.
func NoAuth() Auth { return Auth{mode: AuthNone} }

// Mode returns the WEBHOOK_AUTH name of a.
func (a Auth) Mode() string { return a.mode }

// check reports whether r carries the expected credential. Secrets are compared
// as SHA-256 sums in constant time, so neither content nor length leaks.
func (a Auth) check(r *http.Request) bool {
	var got string
	switch a.mode {
	case AuthNone:
		return true
	case AuthAPIKey:
		got = r.Header.Get("X-API-Key")
	case AuthToken:
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			got = strings.TrimSpace(h[7:])
		} else {
			got = r.URL.Query().Get("token")
		}
	default:
		return false
	}
	if got == "" {
		return false
	}
	var buf [128]byte // the usual key fits: hashed without an allocation
	sum := sha256.Sum256(append(buf[:0], got...))
	ok := 0
	for _, w := range a.want { // no early exit: the time does not say which matched
		ok |= subtle.ConstantTimeCompare(sum[:], w[:])
	}
	return ok == 1
}
