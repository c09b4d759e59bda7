# verifeye-bridge: build, run, test.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/verifeye-bridge

.PHONY: build run serve test test-cluster test-spool test-short bench bench-go fuzz lint vet clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/verifeye-bridge

# The whole pipeline on a laptop: embedded NATS, the VerifEye simulator, ingest and enricher.
run:
	$(GO) run ./cmd/verifeye-bridge dev

# The real thing: embedded NATS unless NATS_URL is set; needs VERIFEYE_API_KEY.
serve:
	$(GO) run ./cmd/verifeye-bridge serve

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m ./...

# A real three-node NATS cluster losing a server under load; run alone.
test-cluster:
	VERIFEYE_TEST_CLUSTER=1 $(GO) test -race -count=1 -timeout 5m -run 'TestCluster' -v ./cmd/verifeye-bridge/

# NATS stopped for a minute under steady webhook load: every answer 202 within
# 5 s from the store-and-forward spool, an ingest SIGKILLed and restarted
# mid-outage, one message and one outcome per session afterwards; run alone.
test-spool:
	VERIFEYE_TEST_SPOOL=1 $(GO) test -race -count=1 -timeout 10m -run 'TestSpoolOutage' -v ./cmd/verifeye-bridge/

test-short:
	$(GO) test -short -count=1 ./...

# Ingest load test of the built binary over loopback, each figure beside a ceiling
# measured in the same run (docs/performance.md). BENCH_DURATION is per run;
# BENCH_FLAGS adds flags, e.g. BENCH_FLAGS='-rate 1000,400' (bin/bench -h lists them).
BENCH_DURATION ?= 10s
BENCH_FLAGS    ?=
bench: build
	$(GO) build -o bin/bench ./internal/cmd/bench
	bin/bench -bin $(BIN) -duration $(BENCH_DURATION) $(BENCH_FLAGS)

# CPU profile of the ingest handler publishing to embedded JetStream; top cost centres.
.PHONY: bench-profile
bench-profile:
	@mkdir -p bin
	$(GO) test -run '^$$' -bench 'Ingest/handler' -benchtime 5s -cpuprofile bin/ingest.cpu.out -o bin/bridge.test ./bridge/
	$(GO) tool pprof -top -cum -nodecount 40 -focus 'bridge\.' bin/bridge.test bin/ingest.cpu.out

# Go benchmarks (each reports its ratio against a ceiling measured in the same run).
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

# Each fuzz target for FUZZTIME: the webhook parser, its fast path against it,
# and outcome.Decode's fast path against encoding/json's.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseWebhook$$' -fuzztime $(FUZZTIME) ./internal/streams/
	$(GO) test -run '^$$' -fuzz '^FuzzFlatWebhook$$' -fuzztime $(FUZZTIME) ./internal/streams/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeExact$$' -fuzztime $(FUZZTIME) ./outcome/

# staticcheck at a pinned version, fetched through the module proxy on first use;
# staticcheck.conf enables every check.
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: vet
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(STATICCHECK) ./...

vet:
	$(GO) vet ./...

clean:
	rm -rf bin data
