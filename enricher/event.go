package enricher

import (
	"fmt"
	"time"

	"github.com/realeyes/verifeye-bridge/outcome"
)

// CloudEvents attributes of an outcome; package outcome owns them.
const (
	EventType        = outcome.EventType
	EventContentType = outcome.ContentType
)

// EventSource returns the CloudEvents source of outcomes of a webhook source.
func EventSource(source string) string { return outcome.CloudEventSource(source) }

// Outcome is an enriched result as published on the results stream.
type Outcome struct {
	// ID is the CloudEvent id; empty means SessionID. A replayed outcome has
	// its own (streams.ReplayOutcomeID), so consumers see a new event.
	ID         string
	SessionID  string
	Source     string
	Outcome    string
	ReceivedAt time.Time
	// Reconciled marks an outcome the bridge fetched for an expected session
	// whose webhook never came (the verifeyereconciled attribute).
	Reconciled bool
	// Data is the Get Session Result body, exactly as the API returned it; it
	// must be valid JSON.
	Data []byte
}

// MarshalEvent returns the CloudEvent of o, encoded by outcome.Marshal (the one
// encoding downstream services decode): data is spliced in byte for byte.
func MarshalEvent(o Outcome) ([]byte, error) {
	b, err := outcome.Marshal(&outcome.Event{
		ID:         o.ID,
		SessionID:  o.SessionID,
		Source:     o.Source,
		Outcome:    o.Outcome,
		Time:       o.ReceivedAt,
		Reconciled: o.Reconciled,
		Data:       o.Data,
	})
	if err != nil {
		return nil, fmt.Errorf("enricher: %w", err)
	}
	return b, nil
}
