package main

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestClusterConcurrentEnsure: replicas starting together all create the same
// R3 streams at once. nats-server answers only the request that won each
// create; streams.Ensure must still succeed for every replica (its next
// attempt finds the stream) instead of waiting forever for a lost answer.
func TestClusterConcurrentEnsure(t *testing.T) {
	if os.Getenv("VERIFEYE_TEST_CLUSTER") == "" {
		t.Skip("starts a three-node NATS cluster; run it with `make test-cluster` (VERIFEYE_TEST_CLUSTER=1)")
	}
	nodes := clusterStart(t, 3)
	s, _ := streams.NewSubjects("verifeye")
	l := streams.DefaultLimits()
	l.Replicas = 3
	const replicas = 4
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		js := clusterJetStream(t, nodes)
		wg.Go(func() {
			// Generous: the lost answers cost one AttemptTimeout per stream at most.
			ctx, cancel := context.WithTimeout(context.Background(), 4*3*streams.AttemptTimeout+10*time.Second)
			defer cancel()
			errs[i] = streams.Ensure(ctx, js, s, l)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: Ensure = %v, want nil", i, err)
		}
	}
}
