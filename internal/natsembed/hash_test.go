package natsembed

import (
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestPasswordHashCost: a generated password (random, at least 128 bits) is
// hashed at bcrypt's lowest cost, since stretching protects only guessable
// passwords and every connection pays the cost (under load a slow check made
// the server's first PING overtake its PONG, and clients failed to connect);
// a password the operator chose keeps bcrypt's default cost.
func TestPasswordHashCost(t *testing.T) {
	for _, tt := range []struct {
		generated bool
		want      int
	}{{true, bcrypt.MinCost}, {false, bcrypt.DefaultCost}} {
		so, err := serverOptions(Options{User: "u", Password: "p4ssw0rd-of-some-length", GeneratedPassword: tt.generated})
		if err != nil {
			t.Fatal(err)
		}
		if len(so.Users) != 1 {
			t.Fatalf("users = %d, want 1", len(so.Users))
		}
		cost, err := bcrypt.Cost([]byte(so.Users[0].Password))
		if err != nil || cost != tt.want {
			t.Errorf("generated=%v: bcrypt cost = %d, %v; want %d", tt.generated, cost, err, tt.want)
		}
		if bcrypt.CompareHashAndPassword([]byte(so.Users[0].Password), []byte("p4ssw0rd-of-some-length")) != nil {
			t.Errorf("generated=%v: the hash does not match the password", tt.generated)
		}
	}
}
